"""Retrieval restricted to semantic buckets: whole-database metrics when unrestricted, misses otherwise."""

from __future__ import annotations

import numpy as np
import pytest

from index.codes import to_signs
from training.evaluation.metrics import evaluate_codes
from training.evaluation.semantic_index import restricted_metrics


def test_unrestricted_scan_gives_the_protocols_metrics() -> None:
    rng = np.random.default_rng(0)
    q, d = to_signs(rng.normal(size=(30, 16))), to_signs(rng.normal(size=(200, 16)))
    ql, dl = rng.integers(0, 2, (30, 3)), rng.integers(0, 2, (200, 3))
    ql[:, 0] = 1
    dl[:, 0] = np.arange(200) % 2  # every query has relevant items
    centers = to_signs(rng.normal(size=(4, 8)))
    full = restricted_metrics(q, d, ql, dl, centers, 8, None)
    reference = evaluate_codes(q, d, ql, dl)
    assert full["scanned"] == 1.0
    for key in ("mAP", "MAP@50", "P@10"):
        assert full[key] == pytest.approx(reference[key])


def test_items_outside_the_probed_bucket_are_misses() -> None:
    centers = np.array([[1] * 8, [-1] * 8], dtype=np.int8)
    query = np.array([[1] * 8 + [1] * 8], dtype=np.int8)  # head nearest center 0
    database = np.array([[1] * 8 + [1] * 8, [-1] * 8 + [1] * 8], dtype=np.int8)  # buckets 0 and 1
    labels = np.array([[1]]), np.array([[1], [1]])
    one = restricted_metrics(query, database, *labels, centers, 8, probe=1)
    assert one["scanned"] == 0.5
    assert one["mAP"] == pytest.approx(0.5)  # one of two relevant items retrieved, at rank 1
    assert one["MAP@50"] == pytest.approx(1.0)
    both = restricted_metrics(query, database, *labels, centers, 8, probe=2)
    assert both["mAP"] == pytest.approx(1.0) and both["scanned"] == 1.0
