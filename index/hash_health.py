"""Hash health: statistics of stored codes that expose a degenerate model before its rankings do.

A good hash spreads items over its code space: each bit is one for about half the items, items spread
over the buckets, most items have a code of their own, and a query's best Hamming distance is shared by
few candidates. A collapsed model fails all four (a constant bit, one huge bucket, many identical
codes, huge tie groups), and its rankings are then storage order. Pure numpy on packed codes (FAISS's
bit order, ``index.codes``), so the index computes them from what it holds and tests from arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Every byte value's eight bits (bit j is the byte's 2^j bit, as packed), to count ones per byte column.
_BYTE_BITS = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.int64)


@dataclass(frozen=True)
class HashHealth:
    """One modality's codes: ``ones`` is each bit's fraction of ones (NaN without items), ``worst_balance``
    the largest |fraction − 0.5| (0 ideal, 0.5 a constant bit), ``buckets_used`` the non-empty buckets,
    ``bucket_skew`` the largest bucket ÷ the mean non-empty one (1 even), ``distinct`` the distinct codes ÷
    items (1 every code its own)."""

    items: int
    ones: np.ndarray
    worst_balance: float
    buckets_used: int
    bucket_skew: float
    distinct: float


def ones_fraction(codes: np.ndarray, bits: int) -> np.ndarray:
    """(bits,) fraction of ones per bit of packed codes (n, bits / 8); NaN when n is 0. Counted per byte
    column by a 256-bin histogram, so a million codes are never unpacked into a bit per byte."""
    assert codes.dtype == np.uint8 and codes.ndim == 2 and codes.shape[1] * 8 == bits, (codes.dtype, codes.shape)
    counts = np.stack([np.bincount(column, minlength=256) for column in codes.T])
    ones = (counts @ _BYTE_BITS).reshape(bits)  # (bytes, 8) → bit j of byte i is bit 8i + j
    return ones / len(codes) if len(codes) else np.full(bits, np.nan)


def distinct_fraction(codes: np.ndarray) -> float:
    """Distinct packed codes ÷ codes (NaN when there are none)."""
    assert codes.dtype == np.uint8 and codes.ndim == 2, (codes.dtype, codes.shape)
    if not len(codes):
        return float("nan")
    rows = np.ascontiguousarray(codes).view(np.dtype((np.void, codes.shape[1])))[:, 0]
    return len(np.unique(rows)) / len(codes)


def bucket_skew(sizes: np.ndarray) -> tuple[int, float]:
    """(non-empty buckets, largest ÷ mean non-empty bucket) of per-bucket item counts; NaN skew when all
    are empty. Empty buckets are left out of the mean: they are a routing matter, not a crowded one."""
    assert sizes.ndim == 1, sizes.shape
    used = sizes[sizes > 0]
    return len(used), float(used.max() / used.mean()) if len(used) else float("nan")


def tie_group_sizes(distances: np.ndarray) -> np.ndarray:
    """(nq,) per query, how many of the candidates a scan ranked (distances ascending, −1 past the end)
    share its best distance; 0 for a query without candidates. Bounded by how many were ranked."""
    assert distances.ndim == 2 and distances.shape[1] > 0, distances.shape
    return ((distances == distances[:, :1]) & (distances >= 0)).sum(axis=1)


def measure(codes: np.ndarray, bucket_sizes: np.ndarray, bits: int) -> HashHealth:
    """The health of one modality's stored codes and its buckets' sizes."""
    assert len(codes) == bucket_sizes.sum(), (len(codes), bucket_sizes.sum())
    ones = ones_fraction(codes, bits)
    used, skew = bucket_skew(bucket_sizes)
    worst = float(np.abs(ones - 0.5).max()) if len(codes) else float("nan")
    return HashHealth(len(codes), ones, worst, used, skew, distinct_fraction(codes))
