"""The third step of a search: the Hamming scan's candidates re-ranked by an asymmetric score.

A code has only bits + 1 distances, so many items tie with a query; their order would otherwise be
storage order. The query's real-valued code ``q`` (the hash function's output before the sign, which
the service has anyway) scores each candidate's stored ±1 code ``b`` by ``q · b``: a Hamming distance
in which each bit weighs as much as the query is sure of it. Nothing more is stored per item.

Candidates are the scan's top ``candidates``, extended to every code at the last distance they reach,
so a tie group is never cut by storage order (up to ``MAX_CANDIDATES``, past which the rest of a huge
tie group is left out: a model with such groups is degenerate, and ``/metrics`` shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CANDIDATES = 4096


# Every byte value's eight bits as ±1, in FAISS's bit order (bit j of a byte is its 2^j bit).
_BYTE_SIGNS = (((np.arange(256)[:, None] >> np.arange(8)) & 1) * 2 - 1).astype(np.float32)


def asymmetric_scores(query_real: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(nq, c) float32 scores ``q · b`` of each query's real code (nq, bits) against its candidates'
    packed codes (nq, c, bits / 8). By table: for each byte of the code, the query's partial score of all
    256 byte values, then one lookup per candidate byte (no unpacking of the candidates)."""
    nq, _, code_size = codes.shape
    assert query_real.shape == (nq, code_size * 8), (query_real.shape, codes.shape)
    bytes_real = np.asarray(query_real, dtype=np.float32).reshape(nq * code_size, 8)
    tables = (bytes_real @ _BYTE_SIGNS.T).reshape(nq, code_size, 256)
    picked = tables[np.arange(nq)[:, None, None], np.arange(code_size), codes]  # (nq, c, code_size)
    return picked.sum(axis=2)


@dataclass(frozen=True)
class Ranked:
    """A re-ranked result list per query: distances, labels and buckets as the scan gives them (−1 past
    the end) and each result's score (NaN past the end), best first."""

    distances: np.ndarray
    labels: np.ndarray
    buckets: np.ndarray
    scores: np.ndarray


def within_tie_groups(distances: np.ndarray, cut: int) -> np.ndarray:
    """(nq, n) bool: results at or below the distance of each query's result ``cut − 1`` (all valid
    results when a query has fewer), i.e. the first ``cut`` results and the rest of their last tie group."""
    bound = np.where(distances[:, cut - 1] >= 0, distances[:, cut - 1], np.iinfo(np.int32).max)
    return (distances >= 0) & (distances <= bound[:, None])


def rerank(
    distances: np.ndarray, labels: np.ndarray, buckets: np.ndarray, codes: np.ndarray, query_real: np.ndarray, cut: int
) -> Ranked:
    """Order each query's first ``cut`` results and the rest of their last tie group by score (best first;
    equal scores keep the scan's order); the other results are dropped. Only the kept candidates are
    scored (a query at a time: the service asks one)."""
    keep = within_tie_groups(distances, cut)
    ranked = Ranked(np.full_like(distances, -1), np.full_like(labels, -1), np.full_like(buckets, -1),
                    np.full(distances.shape, np.nan, dtype=np.float32))  # fmt: skip
    for q in range(len(distances)):
        kept = np.flatnonzero(keep[q])
        scores = asymmetric_scores(query_real[q : q + 1], codes[q : q + 1, kept])[0]
        order = np.argsort(-scores, kind="stable")
        at, n = kept[order], len(kept)
        ranked.distances[q, :n], ranked.labels[q, :n] = distances[q, at], labels[q, at]
        ranked.buckets[q, :n], ranked.scores[q, :n] = buckets[q, at], scores[order]
    return ranked
