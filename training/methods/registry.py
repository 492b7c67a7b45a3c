"""Every trainable method by name, each adapted to one signature: (features, bits, seed, params) → hasher.

``params`` overrides fields of the method's config dataclass (e.g. ``{"n_anchors": 500}``); methods
without hyper-parameters reject any. Trainer modules are imported on use, so choosing one method does
not pay for the others' imports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from training.featurize.pipeline import FeatureSet
from training.methods.base import TrainedHasher

Trainer = Callable[[FeatureSet, int, int, dict], TrainedHasher]


def _no_params(method: str, params: dict) -> None:
    if params:
        raise ValueError(f"{method} takes no parameters, got {sorted(params)}")


def _lsh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.baselines import train_lsh

    _no_params("lsh", params)
    image, text, _ = features.part("train")
    return train_lsh(image, text, bits, seed)


def _cca(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.baselines import train_cca

    _no_params("cca", params)
    image, text, _ = features.part("train")
    return train_cca(image, text, bits)


def _dsfh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.dsfh import DSFHConfig, train_dsfh

    image, text, labels = features.part("train")
    return train_dsfh(image, text, labels, DSFHConfig(bits=bits, **params), seed=seed)


def _amsh(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    from training.methods.amsh import AMSHConfig, train_amsh

    image, text, labels = features.part("train")
    return train_amsh(image, labels, text, labels, AMSHConfig(bits=bits, **params), seed=seed)


def _amsh_unpaired(features: FeatureSet, bits: int, seed: int, params: dict) -> TrainedHasher:
    """AMSH's unpaired protocol (§IV-E): each modality's training set shuffled on its own, so no row
    of one modality corresponds to the same row of the other; only labels tie them."""
    from training.methods.amsh import AMSHConfig, train_amsh

    image, text, labels = features.part("train")
    rng = np.random.default_rng(seed + 1)
    image_order, text_order = rng.permutation(len(image)), rng.permutation(len(text))
    hasher = train_amsh(
        image[image_order],
        labels[image_order],
        text[text_order],
        labels[text_order],
        AMSHConfig(bits=bits),
        seed,
    )
    hasher.method = "amsh-unpaired"
    return hasher


TRAINERS: dict[str, Trainer] = {
    "lsh": _lsh,
    "cca": _cca,
    "dsfh": _dsfh,
    "amsh": _amsh,
    "amsh-unpaired": _amsh_unpaired,
}
