"""Compare two bundles on a held-out evaluation set before one replaces the other in service.

The held-out set is carried with the collections loaded into the index: their rows whose ``split`` is
``query`` (rows a trainer keeps out of training, ``index.collection``), at most ``max_items`` of them in
a seeded sample. Each bundle hashes the set's texts and images; each item queries the other modality
among the set, ranked by Hamming distance over the whole code:

- category: ``t2i_P@10`` / ``i2t_P@10``, the share of the top 10 that shares a label with the query
  (ties at the cut in seeded random order);
- instance: ``t2i_R@10`` / ``i2t_R@10``, how often the query's own pair is in the top 10, in expectation
  over the order of tied items (``index.retrieval_metrics``). Only the own pair counts: an identical
  text of another row is not a hit, for both bundles alike.

A bundle is refused when any metric falls by more than ``max_drop`` (absolute) below the live bundle's.
Features are computed once per feature space (``Bundle.feature_space``), so two bundles over the same
pretrained featurizers decode and featurize the set once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from index import collection_registry
from index.bundle import Bundle
from index.bundle.featurizers import ImageDecodeError
from index.codes import hamming_distances, to_signs
from index.collection import CollectionError, read_collection
from index.redis_calls import call
from index.redis_keys import IndexKeys
from index.retrieval_metrics import category_precision, first_target_ranks, recall_table

HELD_OUT_SPLIT = "query"
K = 10
_SEED = 0


@dataclass(frozen=True)
class EvaluationSet:
    """Held-out rows, row-aligned: text, image file and labels."""

    source: str
    texts: list[str]
    images: list[Path]
    labels: list[frozenset[str]]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class GateResult:
    table: list[dict]  # per metric: live, new, change
    refused_by: list[str]  # metrics that fell by more than max_drop
    evaluation: str  # the set's source and size
    max_drop: float

    @property
    def passed(self) -> bool:
        return not self.refused_by

    def as_json(self) -> dict:
        return {"passed": self.passed, "max_drop": self.max_drop, "evaluation": self.evaluation,
                "refused_by": self.refused_by, "table": self.table}  # fmt: skip


def held_out(client: redis.Redis, index_name: str, max_items: int) -> EvaluationSet | None:
    """The ``query`` rows of every collection registered in the index (a seeded sample of ``max_items``);
    None when there are none."""
    names = sorted(name.decode() for name in call(client.hkeys, IndexKeys(index_name).collections))
    texts, images, labels = [], [], []
    for name in names:
        registered = collection_registry.registered(client, index_name, name)
        try:
            rows = read_collection(registered.manifest).items if registered is not None else []
        except CollectionError:
            continue
        for row in rows:
            path = registered.file(row.image) if row.split == HELD_OUT_SPLIT else None
            if path is not None:
                texts.append(row.text)
                images.append(path)
                labels.append(frozenset(row.labels))
    if not texts:
        return None
    keep = np.sort(np.random.default_rng(_SEED).permutation(len(texts))[:max_items])
    source = f"{len(keep)} held-out rows (split {HELD_OUT_SPLIT!r}) of {', '.join(names)}"
    return EvaluationSet(source, [texts[i] for i in keep], [images[i] for i in keep], [labels[i] for i in keep])


@dataclass
class _Features:
    """Feature vectors of the set, by feature space, computed once; images that fail to decode are dropped
    from every bundle's evaluation alike."""

    evaluation: EvaluationSet
    by_space: dict[str, np.ndarray] = field(default_factory=dict)
    undecodable: set[int] = field(default_factory=set)

    def of(self, bundle: Bundle, modality: str) -> np.ndarray:
        space = bundle.feature_space(modality)
        if space not in self.by_space:
            if modality == "text":
                self.by_space[space] = bundle.text_features(self.evaluation.texts)
            else:
                self.by_space[space] = self._images(bundle)
        return self.by_space[space]

    def _images(self, bundle: Bundle) -> np.ndarray:
        pixels = []
        for row, path in enumerate(self.evaluation.images):
            try:
                pixels.append(bundle.decode_image(path))
            except ImageDecodeError:
                self.undecodable.add(row)
                pixels.append(None)
        shape = next(p.shape for p in pixels if p is not None)
        block = np.stack([p if p is not None else np.zeros(shape, np.uint8) for p in pixels])
        return bundle.image_features(block)


def _metrics(bundle: Bundle, features: _Features, keep: np.ndarray, labels: Sequence[frozenset[str]]) -> dict:
    signs = {m: to_signs(bundle.real_codes(m, features.of(bundle, m)))[keep] for m in ("text", "image")}
    relevant = np.array([[bool(a & b) for b in labels] for a in labels])
    own = np.eye(len(labels), dtype=bool)
    out = {}
    for name, query, database in (("t2i", "text", "image"), ("i2t", "image", "text")):
        scores = -hamming_distances(signs[query], signs[database]).astype(np.float64)
        out[f"{name}_P@{K}"] = float(category_precision(scores, relevant, K, np.random.default_rng(_SEED)).mean())
        out[f"{name}_R@{K}"] = recall_table(first_target_ranks(scores, own), (K,))[f"R@{K}"]
    return out


def compare(live: Bundle, new: Bundle, evaluation: EvaluationSet, max_drop: float) -> GateResult:
    """Both bundles' metrics on the set, side by side; refused where ``new`` falls by more than ``max_drop``."""
    features = _Features(evaluation)
    for bundle in (live, new):
        for modality in ("text", "image"):
            features.of(bundle, modality)
    keep = np.array([i for i in range(len(evaluation)) if i not in features.undecodable])
    labels = [evaluation.labels[i] for i in keep]
    before, after = _metrics(live, features, keep, labels), _metrics(new, features, keep, labels)
    table = [{"metric": name, "live": round(before[name], 4), "new": round(after[name], 4),
              "change": round(after[name] - before[name], 4)} for name in before]  # fmt: skip
    refused = [row["metric"] for row in table if row["change"] < -max_drop]
    return GateResult(table, refused, f"{evaluation.source}, {len(keep)} decoded", max_drop)
