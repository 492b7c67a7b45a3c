"""The one interface every dataset loader returns, and the seeded query/database/training split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[2]
# Benchmark files the project ships (the Wikipedia benchmark): tests and training read them from the checkout.
REPO_DATA = _ROOT / "data"
# Larger benchmarks by name, when a folder ../shared/data/ lies beside the checkout (never needed by tests).
SHARED_DATA = _ROOT.parent / "shared" / "data"
BENCHMARK_DIRS = (REPO_DATA, SHARED_DATA)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says what to install or where to put them."""


@dataclass(frozen=True)
class Split:
    """Index arrays into the dataset. ``train`` is drawn from ``database`` (the literature's protocol)."""

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"query": len(self.query), "database": len(self.database), "train": len(self.train)}


def seeded_split(n: int, n_query: int, n_train: int | None, seed: int) -> Split:
    """Random query set; the rest is the retrieval database; training items are sampled from it.

    ``n_train=None`` trains on the whole database. Indices within each part are sorted so that the
    database order (which decides tie order in Hamming ranking) does not depend on the permutation.
    """
    if not 0 < n_query < n:
        raise ValueError(f"query size {n_query} must be between 1 and {n - 1} for {n} items")
    perm = np.random.default_rng(seed).permutation(n)
    query, database = np.sort(perm[:n_query]), perm[n_query:]
    train = database if n_train is None or n_train >= len(database) else database[:n_train]
    return Split(query=query, database=np.sort(database), train=np.sort(train))


@dataclass
class CrossModalDataset:
    """Paired items with two modalities and multi-hot labels.

    ``images`` is either raw pixels (n, 3, S, S) uint8 (``image_kind == "pixels"``) or a feature matrix
    (n, d) (``"features"``); ``texts`` is a list of raw strings (``text_kind == "raw"``) or a feature
    matrix (``"features"``). Featurizers turn raw sides into features.
    """

    name: str
    images: np.ndarray
    texts: list[str] | np.ndarray
    labels: np.ndarray
    label_names: list[str]
    split: Split
    image_kind: str
    text_kind: str
    ids: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    image_root: Path | None = None  # folder whose png/<id>.png are the images: pretrained features decode them anew
    default_features: str = "classic"  # featurizers used when none are asked for: "classic" or "pretrained"
    features_available: tuple[str, ...] = ("classic", "pretrained")
    # Set when ``images`` are already the pretrained encoder's pixels (a collection): names them for the
    # feature cache (the files' paths, sizes and times), since no corpus root and ids do.
    pixels_key: str | None = None
    # Raw datasets only: per item, short texts that describe it alone (its title, each tag), which trainers
    # may add as extra text rows (training.methods.base.TextViews); empty when the dataset has none.
    text_views: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if len(self.images) != n or len(self.texts) != n:
            raise ValueError(f"{self.name}: {len(self.images)} images, {len(self.texts)} texts, {n} labels")
        if self.text_views and len(self.text_views) != n:
            raise ValueError(f"{self.name}: text views for {len(self.text_views)} of {n} items")

    def __len__(self) -> int:
        return len(self.labels)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "items": len(self),
            "labels": len(self.label_names),
            "image_kind": self.image_kind,
            "text_kind": self.text_kind,
            "split": self.split.sizes(),
            "mean_labels_per_item": float(self.labels.sum(1).mean()),
            **self.stats,
        }


def save_npy_atomically(path: Path, array: np.ndarray) -> None:
    """Write a cache array so that a reader never sees half of it: a temporary file, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array, allow_pickle=False)
    tmp.replace(path)
