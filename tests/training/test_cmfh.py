"""CMFH (the Table III baseline used to check our metric definitions): each block step is its exact
minimiser, so the objective never rises; the codes find the shared space; bad settings are refused."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from index.bundle import load_bundle
from index.codes import to_signs
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal
from training.bundle.writer import write_bundle
from training.evaluation.metrics import evaluate_codes, relevance
from training.featurize.pipeline import featurize
from training.methods import cmfh
from training.methods.cmfh import CMFHConfig, train_cmfh
from training.registry import TRAINERS


def test_the_objective_never_rises_and_is_the_function_the_trainer_records() -> None:
    data = make_synthetic_crossmodal(n=300, seed=2)
    hasher = train_cmfh(data["image"], data["text"], CMFHConfig(16, iterations=15, tolerance=0.0), seed=1)
    objective = [record["objective"] for record in hasher.history]
    assert len(objective) == 15
    assert all(b <= a * (1 + 1e-12) for a, b in itertools.pairwise(objective))
    assert objective[-1] < objective[0]


def test_each_projection_is_the_exact_ridge_minimiser() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    w = cmfh._ridge_solve(a, b, 0.7)

    def loss(m: np.ndarray) -> float:
        return float(((a @ m - b) ** 2).sum() + 0.7 * (m**2).sum())

    for _ in range(20):
        assert loss(w) <= loss(w + 1e-3 * rng.normal(size=w.shape))


def test_codes_find_the_shared_space_and_are_seeded() -> None:
    data = make_synthetic_crossmodal(n=500, n_classes=6, seed=3)
    train, query = slice(0, 400), slice(400, 500)
    hasher = train_cmfh(data["image"][train], data["text"][train], CMFHConfig(16), seed=0)
    codes = {m: to_signs(hasher.encoders[m].real_codes(data[m])) for m in ("image", "text")}
    labels_q, labels_db = data["labels"][query], data["labels"][train]
    prior = float(relevance(labels_q, labels_db).mean())
    i2t = evaluate_codes(codes["image"][query], codes["text"][train], labels_q, labels_db)
    t2i = evaluate_codes(codes["text"][query], codes["image"][train], labels_q, labels_db)
    assert i2t["mAP"] > prior + 0.1 and t2i["mAP"] > prior + 0.1
    again = train_cmfh(data["image"][train], data["text"][train], CMFHConfig(16), seed=0)
    assert np.array_equal(again.encoders["text"].projection, hasher.encoders["text"].projection)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"bits": 0}, "at least one bit"),
        ({"image_weight": 1.0}, "image_weight"),
        ({"ridge": 0.0}, "ridge"),
        ({"iterations": 0}, "iterations"),
    ],
)
def test_bad_settings_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CMFHConfig(**({"bits": 8} | fields))


def test_the_cli_method_writes_a_bundle_whose_codes_equal_the_trainers(tmp_path: Path) -> None:
    data = make_synthetic_crossmodal(n=200, seed=5)
    features = featurize(as_feature_dataset(data))
    hasher = TRAINERS["cmfh"](features, 16, 0, {"iterations": 5})
    write_bundle(tmp_path / "cmfh", hasher, features, {})
    bundle = load_bundle(tmp_path / "cmfh")
    for modality, x in (("image", features.image), ("text", features.text)):
        assert np.array_equal(bundle.signs(modality, x), to_signs(hasher.encoders[modality].real_codes(x)))
