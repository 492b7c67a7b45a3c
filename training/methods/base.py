"""What every trainer returns: one real-valued encoder per modality plus its training record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    import onnx

MODALITIES = ("image", "text")


class ModalityEncoder(Protocol):
    """Maps a modality's feature vectors to real codes; the binary code is their sign."""

    @property
    def bits(self) -> int: ...

    @property
    def input_dim(self) -> int: ...

    def real_codes(self, x: np.ndarray) -> np.ndarray: ...

    def onnx_graph(self) -> onnx.ModelProto:
        """:meth:`real_codes` as the ONNX graph a bundle ships (``training.methods.onnx_model``)."""
        ...


@dataclass
class TrainedHasher:
    """A trained cross-modal hasher: ``encoders[m].real_codes(features)`` for m in MODALITIES."""

    method: str
    bits: int
    encoders: dict[str, ModalityEncoder]
    config: dict
    history: list[dict] = field(default_factory=list)  # one record per outer iteration (objectives...)
    # A learned semantic-index head (UDDH): the first head_bits bits of every code, and its centers.
    head_bits: int | None = None
    centers: np.ndarray | None = None


@dataclass(frozen=True)
class TextViews:
    """Short texts of items (a title alone, one tag): as extra training rows they teach the text hash
    function that a one- or two-word query is the kind of input it maps (docs/results_pretrained.md);
    as queries they measure how it does on one. ``features[j]`` is a view of row ``item[j]`` of a part
    of the dataset (for training: of the training set, with that item's labels and code)."""

    features: np.ndarray  # (m, d), featurized like the full texts
    item: np.ndarray  # (m,) int, a row of the part

    def __post_init__(self) -> None:
        if len(self.features) != len(self.item):
            raise ValueError(f"{len(self.features)} view features for {len(self.item)} view items")


def evaluation_fields(result: dict[str, float] | float) -> dict[str, float]:
    """An ``eval_fn`` result as fields of a history record: a dict's values, or a bare number as ``eval``."""
    values = result if isinstance(result, dict) else {"eval": result}
    return {key: float(value) for key, value in values.items()}


def check_features(name: str, x: np.ndarray) -> np.ndarray:
    """Validate a training feature matrix before any work starts; returns it as float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} features must be a non-empty 2-D matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} features contain NaN or inf ({int((~np.isfinite(x)).sum())} values)")
    return x


def check_labels(name: str, labels: np.ndarray, n: int) -> np.ndarray:
    """Validate a multi-hot label matrix: n rows, 0/1 entries, no empty class."""
    y = np.asarray(labels)
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"{name} labels must have shape ({n}, c), got {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{name} labels must be multi-hot 0/1")
    empty = np.flatnonzero(y.sum(0) == 0)
    if empty.size:
        raise ValueError(f"{name} labels have {empty.size} empty class(es), e.g. column {int(empty[0])}")
    return y.astype(np.float64)


def check_paired(image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a supervised paired training set: both feature matrices, one row per item in each,
    multi-hot labels, and some non-zero row in each modality. Returns them as float64."""
    image, text = check_features("image", image), check_features("text", text)
    n = len(image)
    if len(text) != n:
        raise ValueError(f"image and text must be paired row by row: {n} vs {len(text)} rows")
    labels = check_labels("training", labels, n)
    for name, x in (("image", image), ("text", text)):
        if not x.any():
            raise ValueError(f"every {name} training row has zero norm: there is nothing to learn from")
    return image, text, labels


def check_views(views: TextViews | None, text: np.ndarray) -> TextViews | None:
    """Validate text views against the training texts: finite features of the texts' width, each naming a
    training row. Returns them with float64 features and int64 items; None passes through."""
    if views is None:
        return None
    features = check_features("text view", views.features)
    item = np.asarray(views.item)
    if features.shape[1] != text.shape[1]:
        raise ValueError(f"text views have {features.shape[1]} dimensions, the texts {text.shape[1]}")
    if not np.issubdtype(item.dtype, np.integer) or not ((item >= 0) & (item < len(text))).all():
        raise ValueError(f"text view items must be training rows 0..{len(text) - 1}")
    return TextViews(features, item.astype(np.int64))
