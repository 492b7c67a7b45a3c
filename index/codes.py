"""Binary code conventions shared by trainers, evaluation, bundles and the index.

A hash function outputs a real vector; its code is the sign with the rule ``bit = 1 iff value > 0``
(so an exact zero maps to bit 0 / sign −1). Packed codes use FAISS's layout: bit ``j`` of a code lives
in byte ``j // 8`` at position ``j % 8`` (least significant first), i.e. ``np.packbits(bitorder="little")``.
"""

from __future__ import annotations

import numpy as np


def check_code_bits(bits: int, what: str = "code length") -> int:
    """``bits``, when it is a length codes can have: a positive multiple of 8, since packed codes are whole
    bytes (FAISS's binary layout); else a ValueError naming ``what``. The one statement of the rule, checked
    where a length is born (``train --bits``, the manifest, :class:`index.code_space.CodeSpace`)."""
    if bits <= 0 or bits % 8:
        raise ValueError(f"{what} must be a positive multiple of 8, got {bits}")
    return bits


def to_signs(real: np.ndarray) -> np.ndarray:
    """Real-valued codes → {−1, +1} as int8."""
    return np.where(np.asarray(real) > 0, 1, -1).astype(np.int8)


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """{−1, +1} codes (n, bits) → packed uint8 (n, ceil(bits / 8)) in FAISS bit order."""
    return np.packbits(np.asarray(signs) > 0, axis=1, bitorder="little")


def unpack_signs(packed: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_signs`."""
    unpacked = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1, count=bits, bitorder="little")
    return unpacked.astype(np.int8) * 2 - 1


def hamming_distances(query_signs: np.ndarray, db_signs: np.ndarray) -> np.ndarray:
    """All-pairs Hamming distances between {−1, +1} codes, as int32 (nq, nd).

    Uses ``d = (bits − q·b) / 2``; the float32 matmul is exact for any realistic code length.
    """
    q = np.asarray(query_signs, dtype=np.float32)
    d = np.asarray(db_signs, dtype=np.float32)
    if q.shape[1] != d.shape[1]:
        raise ValueError(f"code lengths differ: {q.shape[1]} vs {d.shape[1]} bits")
    return np.rint((q.shape[1] - q @ d.T) / 2).astype(np.int32)
