"""Contrastive instance hashing and the DSFH-head / instance-tail code: each item findable by its own pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.codes import to_signs
from training.evaluation.instance import instance_recall, pair_targets
from training.methods.contrastive import ContrastiveConfig, Pairs, multi_positive_infonce, train_contrastive
from training.methods.dsfh_instance import DSFHInstanceConfig, train_dsfh_instance


def _paired(n: int = 400, seed: int = 0) -> dict[str, np.ndarray]:
    """Items that differ one from another (an item vector seen through two noisy maps) and share labels."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 16))
    labels = np.eye(4, dtype=np.int8)[np.argmax(latent[:, :4], axis=1)]
    image = latent @ rng.normal(size=(16, 40)) + 0.1 * rng.normal(size=(n, 40))
    text = latent @ rng.normal(size=(16, 30)) + 0.1 * rng.normal(size=(n, 30))
    return {"image": image, "text": text, "labels": labels}


def _own_pair_recall(image_codes: np.ndarray, text_codes: np.ndarray) -> float:
    q, db = to_signs(text_codes).astype(np.float32), to_signs(image_codes).astype(np.float32)
    rows = np.arange(len(q))
    return instance_recall(lambda r: q[r] @ db.T, len(q), pair_targets(rows, rows), (10,))["R@10"]


def test_contrastive_codes_find_the_items_own_pair_far_above_chance() -> None:
    data = _paired()
    config = ContrastiveConfig(bits=32, hidden=64, epochs=15, batch_size=128)
    hasher = train_contrastive(Pairs(data["image"], data["text"], data["labels"]), config, seed=0)
    codes = {m: hasher.encoders[m].real_codes(data[m]) for m in ("image", "text")}
    assert _own_pair_recall(codes["image"], codes["text"]) > 0.25  # chance: 10 / 400 = 0.025
    assert set(np.unique(np.abs(codes["image"]) <= 1)) == {True}  # tanh: the relaxed code, sign at serving


def test_identical_texts_are_positives_not_negatives() -> None:
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # items 0 and 1 have the same text
    own = torch.eye(3, dtype=torch.bool)
    same_text = own.clone()
    same_text[0, 1] = same_text[1, 0] = True
    assert multi_positive_infonce(a, b, same_text, 0.1) < multi_positive_infonce(a, b, own, 0.1)


def test_the_head_is_dsfhs_code_and_the_tail_the_contrastive_code() -> None:
    data = _paired()
    config = DSFHInstanceConfig(bits=32, head_bits=16, dsfh={"n_anchors": 100, "n_clusters": 8},
                                contrastive={"hidden": 64, "epochs": 5, "batch_size": 128})  # fmt: skip
    hasher = train_dsfh_instance(Pairs(data["image"], data["text"], data["labels"]), config, seed=0)
    codes = {m: hasher.encoders[m].real_codes(data[m]) for m in ("image", "text")}
    assert codes["image"].shape == (400, 32)
    assert np.abs(codes["image"][:, :16]).max() <= config.head_weight  # the head's share of the re-ranker
    assert [record["part"] for record in hasher.history][:1] == ["dsfh"]


@pytest.mark.parametrize("changes", [{"bits": 60}, {"head_bits": 12}, {"head_bits": 64, "bits": 64}])
def test_code_lengths_that_are_not_whole_bytes_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError, match="multiple"):
        DSFHInstanceConfig(**changes) if "head_bits" in changes else ContrastiveConfig(**changes)
