"""Retrieval metrics on scores, shared by training's evaluation and the service's quality gate.

A ranking is a score per database item, higher first: ``−Hamming distance`` for codes. Scores tie (a
64-bit code has 65 distances), so an instance rank is reported three ways: *expected* (tied items in
uniformly random order, in closed form), *optimistic* (targets first among ties) and *pessimistic*
(targets last). With r targets among the t items tied at the best target score and ``before`` items
scored higher, the first target's expected rank is ``before + (t + 1) / (r + 1)``, and it lies within
the top K with probability ``1 − C(t − r, m) / C(t, m)``, ``m = K − before`` the top-K slots left to the
tie group.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_AT = (1, 5, 10, 50)


def first_target_ranks(scores: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """Per query (rows of ``scores``, (nq, nd), higher first) and its target mask (same shape): ``before``
    (items scored above the best target), ``tied`` (items at that score, targets included) and
    ``targets_tied`` (targets at that score). A query without a target gets −1 in all three."""
    assert scores.shape == targets.shape and targets.dtype == bool, (scores.shape, targets.shape)
    has = targets.any(axis=1)
    best = np.where(targets, scores, -np.inf).max(axis=1, initial=-np.inf)[:, None]
    before = (scores > best).sum(axis=1)
    tied = (scores == best).sum(axis=1)
    targets_tied = (targets & (scores == best)).sum(axis=1)
    return {key: np.where(has, value, -1) for key, value in
            (("before", before), ("tied", tied), ("targets_tied", targets_tied))}  # fmt: skip


def _hit_probability(before: np.ndarray, tied: np.ndarray, r: np.ndarray, k: int) -> np.ndarray:
    """P(first target within the top k) with the tie group in random order: 1 − C(t−r, m) / C(t, m)."""
    m = np.clip(k - before, 0, tied)
    miss = np.ones(len(before))
    for i in range(k):  # product over the m slots: (t − r − i) / (t − i)
        active = i < m
        miss = np.where(active, miss * np.clip(tied - r - i, 0, None) / np.maximum(tied - i, 1), miss)
    return np.where(m > 0, 1.0 - miss, 0.0)


def recall_table(ranks: dict[str, np.ndarray], recall_at: Sequence[int] = RECALL_AT) -> dict[str, float]:
    """R@K expected, optimistic and pessimistic, and the median expected rank (1 = first), over queries
    that have a target."""
    keep = ranks["before"] >= 0
    before, tied, r = (ranks[key][keep].astype(np.float64) for key in ("before", "tied", "targets_tied"))
    table: dict[str, float] = {"queries": int(keep.sum())}
    for k in recall_at:
        table[f"R@{k}"] = float(_hit_probability(before, tied, r, k).mean())
        table[f"R@{k}_optimistic"] = float((before + 1 <= k).mean())
        table[f"R@{k}_pessimistic"] = float((before + tied - r + 1 <= k).mean())
    table["median_rank"] = float(np.median(before + (tied + 1) / (r + 1)))
    return table


def category_precision(scores: np.ndarray, relevant: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Per query, P@k by label (relevant: shares a label), ties in seeded random order."""
    order = np.lexsort((rng.random(scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(relevant, order, axis=1).mean(axis=1)
