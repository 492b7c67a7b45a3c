"""UDDH's central claim, measured: retrieval restricted to the query's semantic bucket(s).

Each database item lives in the bucket of its nearest center (head bits, Hamming distance). A query
probes its ``probe`` nearest centers and ranks only the items of those buckets by full-code Hamming
distance (stable ties, as the protocol). Items outside are not retrieved: they score as misses, so
restricted mAP divides by *all* relevant database items, and MAP@50 / P@10 read the restricted list.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.bundle import Bundle
from index.centers import nearest_centers
from index.codes import hamming_distances
from training.evaluation.metrics import average_precision_at, relevance
from training.evaluation.report import DIRECTIONS
from training.featurize.pipeline import FeatureSet


def restricted_metrics(
    query: np.ndarray,
    database: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    centers: np.ndarray,
    head_bits: int,
    probe: int | None,
) -> dict:
    """mAP, MAP@50, P@10 and the scanned fraction when each query scans only its ``probe`` nearest
    buckets (``None``: the whole database). Codes are {−1, +1}; the head is their first bits."""
    bits = query.shape[1]
    dist = hamming_distances(query, database)
    rel = relevance(query_labels, db_labels)
    keep = rel.any(1)
    dist, rel, query = dist[keep], rel[keep], query[keep]
    if probe is None:
        allowed = np.ones_like(rel)
    else:
        db_bucket = nearest_centers(database[:, :head_bits], centers)[:, 0]
        probes = nearest_centers(query[:, :head_bits], centers, probe)
        allowed = (db_bucket[None, :, None] == probes[:, None, :]).any(2)
    order = np.argsort(np.where(allowed, dist, bits + 1), axis=1, kind="stable")
    ranked = np.take_along_axis(rel & allowed, order, 1)
    hits = np.cumsum(ranked, axis=1)
    precision = hits / np.arange(1, ranked.shape[1] + 1)
    full_ap = (precision * ranked).sum(1) / rel.sum(1)
    return {
        "probe": "all" if probe is None else probe,
        "mAP": float(full_ap.mean()),
        "MAP@50": float(average_precision_at(ranked, 50).mean()),
        "P@10": float((hits[:, min(9, hits.shape[1] - 1)] / 10).mean()),  # fewer than 10 items: misses
        "scanned": float(allowed.mean()),
    }


def semantic_index_rows(model: Bundle, features: FeatureSet, probes: Sequence[int]) -> list[dict]:
    """``python -m training semantic-index``'s table: per direction, the metrics over the whole database
    (probe None) and restricted to each number of probed buckets, rounded to 4 decimals."""
    rows = []
    for direction, (source, target) in DIRECTIONS.items():
        query = model.signs(source, features.part("query")[0 if source == "image" else 1])
        database = model.signs(target, features.part("database")[0 if target == "image" else 1])
        labels = features.part("query")[2], features.part("database")[2]
        for probe in [None, *probes]:
            result = restricted_metrics(query, database, *labels, model.centers, model.head_bits, probe)
            rows.append(
                {
                    "direction": direction,
                    **{k: v if isinstance(v, str | int) else round(v, 4) for k, v in result.items()},
                }
            )
    return rows
