"""The code space is checked once, where it is made; a code length that is not whole bytes is refused where it
is born (``train --bits``, the manifest), not when the bundle it made is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from index.bundle.manifest import Manifest
from index.code_space import CodeSpace
from training.cli import app

DEFAULT_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "default" / "manifest.json"


def _centers(k: int, head_bits: int) -> np.ndarray:
    return np.where(np.random.default_rng(0).random((k, head_bits)) > 0.5, 1, -1).astype(np.int8)


@pytest.mark.parametrize(
    ("bits", "centers", "message"),
    [
        (60, _centers(4, 16), "code length must be a positive multiple of 8, got 60"),
        (64, _centers(4, 12), "head length must be a positive multiple of 8, got 12"),
        (64, _centers(4, 72), "a head of 72 bits does not fit 64-bit codes"),
        (64, np.zeros((0, 16), np.int8), "k ≥ 1"),
    ],
)
def test_a_code_space_that_does_not_fit_together_is_refused_where_it_is_made(bits, centers, message) -> None:
    with pytest.raises(ValueError, match=message):
        CodeSpace("b", bits, centers, "v")


def test_a_valid_code_space_is_one_immutable_value() -> None:
    space = CodeSpace("b", 64, _centers(4, 16), "v", rerank_candidates=10)
    assert space.head_bits == 16
    with pytest.raises(AttributeError):
        space.bits = 32  # type: ignore[misc]


def test_the_manifest_refuses_a_code_length_that_is_not_whole_bytes() -> None:
    manifest = json.loads(DEFAULT_MANIFEST.read_text())
    Manifest.model_validate(manifest)
    with pytest.raises(ValidationError, match="code length must be a positive multiple of 8, got 60"):
        Manifest.model_validate(manifest | {"code_bits": 60})


def test_train_refuses_bits_that_are_not_whole_bytes_before_it_trains(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--dataset", "wikipedia", "--bits", "60", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "multiple of 8" in result.output
    assert not any(tmp_path.iterdir())
