"""Trainers end to end: trained on the real corpus, exported, and read back bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from typer.testing import CliRunner

from index.bundle import load_bundle
from index.codes import to_signs
from tests.support.synthetic import make_synthetic_crossmodal
from training.bundle.writer import write_bundle
from training.cli import app
from training.datasets import load_dataset
from training.featurize.pipeline import FeatureSet, featurize
from training.registry import TRAINERS


@pytest.fixture(scope="module")
def openclipart() -> FeatureSet:
    return featurize(load_dataset("openclipart"))


# Parity needs a trained network, not a good one: the deep methods train briefly.
SHORT_UDDH = {"outer_iterations": 2, "epochs_per_iteration": 1}
SHORT_DMSFH = {"epochs": 1}
SHORT_MMACH = {"epochs": 1, "label_warmup_epochs": 0}
SHORT_CONTRASTIVE = {"epochs": 1}
SHORT_DSFH_INSTANCE = {"head_bits": 16, "contrastive": SHORT_CONTRASTIVE}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("dsfh", {}),
        ("amsh", {}),
        ("amsh-unpaired", {}),
        ("uddh", SHORT_UDDH),
        ("dmsfh", SHORT_DMSFH),
        ("mmach", SHORT_MMACH),
        ("contrastive", SHORT_CONTRASTIVE),
        ("dsfh-instance", SHORT_DSFH_INSTANCE),
    ],
)
def test_onnx_codes_equal_the_trainers_codes_on_the_whole_query_set(
    method: str, params: dict, openclipart: FeatureSet, tmp_path: Path
) -> None:
    hasher = TRAINERS[method](openclipart, 32, 0, params)
    write_bundle(tmp_path / method, hasher, openclipart, {})
    bundle = load_bundle(tmp_path / method)
    image, text, _ = openclipart.part("query")
    for modality, x in (("image", image), ("text", text)):
        trainer_codes = to_signs(hasher.encoders[modality].real_codes(x))
        assert np.array_equal(bundle.signs(modality, x), trainer_codes), f"{modality} bits differ"
    assert len(image) == 1000
    assert bundle.head_bits == (16 if method == "uddh" else 32)  # UDDH's head is its shared code


def test_cli_trains_on_a_mat_benchmark_and_writes_bundle_metrics_and_plots(tmp_path: Path) -> None:
    """The paper-reproduction command, run on a small synthetic .mat (the real files are not here)."""
    data = make_synthetic_crossmodal(n=700, seed=3)
    arrays = {"I": data["image"], "T": data["text"], "L": data["labels"]}
    split = {f"{k}_te": v[:100] for k, v in arrays.items()} | {f"{k}_tr": v[100:] for k, v in arrays.items()}
    scipy.io.savemat(tmp_path / "toy.mat", split)
    out = tmp_path / "runs"
    command = ["train", "--method", "dsfh", "--dataset", str(tmp_path / "toy.mat"), "--bits", "16"]
    command += ["--out", str(out), "--param", "n_anchors=300", "--param", "n_clusters=20"]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    [row] = json.loads((out / "summary.json").read_text())
    assert row["method"] == "dsfh" and row["bits"] == 16
    assert row["i2t_mAP"] > 0.8 and row["t2i_mAP"] > 0.8  # a learnable toy problem
    manifest = load_bundle(out / "16bits" / "bundle").manifest
    assert manifest.training.dataset == "toy" and manifest.training.config["n_anchors"] == 300
    assert (out / "16bits" / "pr_radius.png").is_file()


def test_cli_rejects_unknown_parameters_before_training(tmp_path: Path) -> None:
    data = make_synthetic_crossmodal(n=200)
    arrays = {"I": data["image"], "T": data["text"], "L": data["labels"]}
    scipy.io.savemat(tmp_path / "toy.mat", {f"{k}_te": v[:50] for k, v in arrays.items()} | {
        f"{k}_tr": v[50:] for k, v in arrays.items()
    })  # fmt: skip
    command = ["train", "--method", "dsfh", "--dataset", str(tmp_path / "toy.mat"), "--bits", "8"]
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path), "--param", "nope=1"])
    assert result.exit_code == 2 and "nope" in result.output
