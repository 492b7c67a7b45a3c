"""Synthetic data for unit tests only, never for reported results."""

from __future__ import annotations

import numpy as np


def make_synthetic_crossmodal(
    n: int = 600, n_classes: int = 6, image_dim: int = 40, text_dim: int = 60, seed: int = 0
) -> dict[str, np.ndarray]:
    """Two modalities generated from shared multi-hot labels plus noise (a learnable toy problem)."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_classes)) < 1.5 / n_classes).astype(np.int8)
    labels[np.arange(n), rng.integers(0, n_classes, n)] = 1  # every item has at least one label
    image_basis = rng.normal(size=(n_classes, image_dim))
    text_basis = rng.normal(size=(n_classes, text_dim))
    image = labels @ image_basis + 0.5 * rng.normal(size=(n, image_dim))
    text = np.maximum(labels @ text_basis + 0.5 * rng.normal(size=(n, text_dim)), 0)
    return {"image": image, "text": text, "labels": labels, "text_basis": text_basis}


def short_texts(data: dict[str, np.ndarray], rows: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One "tag" per row of ``rows`` and its label: the text basis of one of the item's labels alone,
    shifted along a direction the full texts never take (as a one-word text embeds apart from whole
    descriptions), plus noise. Toy short texts for the text-view tests."""
    rng = np.random.default_rng(seed)
    basis = data["text_basis"]
    shift = 3.0 * np.abs(rng.normal(size=basis.shape[1]))
    tags = np.array([rng.choice(np.flatnonzero(data["labels"][r])) for r in rows])
    return np.maximum(basis[tags] + shift + 0.5 * rng.normal(size=(len(rows), basis.shape[1])), 0), tags


def as_feature_dataset(data: dict[str, np.ndarray], n_query: int = 50):
    """A synthetic feature-matrix dataset with a seeded split, as the loaders return real ones."""
    from training.datasets.base import CrossModalDataset, seeded_split

    n = len(data["labels"])
    return CrossModalDataset(
        name="toy-features",
        images=data["image"],
        texts=data["text"],
        labels=data["labels"],
        label_names=[f"c{j}" for j in range(data["labels"].shape[1])],
        split=seeded_split(n, n_query, None, 0),
        image_kind="features",
        text_kind="features",
    )
