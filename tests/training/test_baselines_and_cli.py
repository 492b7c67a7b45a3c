"""Baselines, the trainer registry and the ``python -m training`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from index.codes import to_signs
from tests.support.synthetic import as_feature_dataset, make_synthetic_crossmodal
from training.cli import app
from training.evaluation.metrics import evaluate_codes
from training.featurize.pipeline import featurize
from training.methods.baselines import train_cca, train_lsh
from training.methods.uddh import UDDHConfig
from training.registry import TRAINERS, build_config

runner = CliRunner()


def _cross_modal_map(hasher, data: dict[str, np.ndarray]) -> float:
    image = to_signs(hasher.encoders["image"].real_codes(data["image"][:100]))
    text = to_signs(hasher.encoders["text"].real_codes(data["text"][100:]))
    return evaluate_codes(image, text, data["labels"][:100], data["labels"][100:])["mAP"]


def test_cca_finds_the_shared_space_that_independent_lsh_cannot() -> None:
    data = make_synthetic_crossmodal()
    prior = evaluate_codes(
        np.ones((100, 8), np.int8), np.ones((500, 8), np.int8), data["labels"][:100], data["labels"][100:]
    )["mAP"]  # every item at distance 0: mAP of a random order, i.e. the label prior
    cca = _cross_modal_map(train_cca(data["image"], data["text"], 8), data)
    lsh = _cross_modal_map(train_lsh(data["image"], data["text"], 8, seed=0), data)
    assert cca > prior + 0.15
    assert abs(lsh - prior) < 0.1


def test_datasets_command_explains_a_missing_dataset() -> None:
    result = runner.invoke(app, ["datasets", "no-such-dataset"])
    assert result.exit_code == 2
    assert "unknown dataset 'no-such-dataset'" in result.output


def test_evaluate_command_writes_metrics_and_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    codes = tmp_path / "codes.npz"
    np.savez(
        codes,
        query_image=rng.normal(size=(20, 16)),
        query_text=rng.normal(size=(20, 16)),
        database_image=rng.normal(size=(50, 16)),
        database_text=rng.normal(size=(50, 16)),
        query_labels=rng.integers(0, 2, (20, 3)),
        database_labels=rng.integers(0, 2, (50, 3)),
    )
    result = runner.invoke(app, ["evaluate", str(codes), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(metrics) == {"i2t", "t2i"} and 0 < metrics["i2t"]["mAP"] <= 1
    assert (tmp_path / "report" / "pr_radius.png").stat().st_size > 0
    assert (tmp_path / "report" / "precision_topn.png").stat().st_size > 0


def test_evaluate_command_names_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "partial.npz", query_image=np.ones((2, 8)))
    result = runner.invoke(app, ["evaluate", str(tmp_path / "partial.npz"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "lacks arrays" in result.output


@pytest.fixture(scope="module")
def features():
    return featurize(as_feature_dataset(make_synthetic_crossmodal(n=300, seed=5)))


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("dsfh", {"anchors": 50}, r"dsfh does not take anchors \(unknown\); valid parameters: .*\bn_anchors\b"),
        ("amsh", {"n_anchor": 50}, r"amsh does not take n_anchor \(unknown\); valid parameters: .*\bn_anchors\b"),
        ("amsh-unpaired", {"nope": 1}, r"amsh-unpaired does not take nope \(unknown\); valid parameters: .*\bbeta\b"),
        ("dmsfh", {"lr_end": 1e-4}, r"lr_end \(unknown\); valid parameters: .*\bfinal_lr\b"),
        ("mmach", {"bits": 8}, r"mmach does not take bits \(set by --bits\)"),
        ("uddh", {"specific_bits": 8}, r"uddh does not take specific_bits \(set by --bits\); .*\bshared_bits\b"),
        ("lsh", {"seed": 1}, r"lsh does not take seed \(unknown\); valid parameters: none"),
        ("cca", {"ridge": 1.0}, r"cca does not take ridge \(unknown\); valid parameters: none"),
    ],
)
def test_every_trainer_refuses_an_unknown_parameter_naming_the_valid_ones(features, method, params, message) -> None:
    with pytest.raises(ValueError, match=message):
        TRAINERS[method](features, 16, 0, params)


def test_build_config_keeps_registry_defaults_overridable_and_fixed_fields_fixed() -> None:
    config = build_config("uddh", UDDHConfig, {"n_clusters": 5}, {"specific_bits": 8}, shared_bits=8, n_clusters=64)
    assert (config.shared_bits, config.specific_bits, config.n_clusters) == (8, 8, 5)
    assert build_config("lsh", None, {}, {}) is None


def test_amsh_unpaired_trains_with_the_given_parameters(features) -> None:
    hasher = TRAINERS["amsh-unpaired"](features, 8, 0, {"n_anchors": 60, "iterations": 2})
    assert hasher.method == "amsh-unpaired"
    assert (hasher.config["n_anchors"], hasher.config["iterations"]) == (60, 2)
    assert hasher.encoders["image"].kernel.anchors.shape[0] == 60
