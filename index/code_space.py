"""The code space an index serves: which bundle's codes, how long, routed by which centers, re-ranked how.

One immutable value, checked once where it is made, then passed whole to the index (``HashIndex.open``):
the code length and the centers' head length are whole bytes (:func:`index.codes.check_code_bits`), the
head at most the code. A bundle gives its own (``Bundle.code_space``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index.codes import check_code_bits


@dataclass(frozen=True)
class CodeSpace:
    """``bits``-bit codes of bundle ``bundle_id``, routed by ``centers`` ((k, head_bits) int8 in {−1, +1},
    named by ``centers_version``); ``rerank_candidates``: Hamming candidates the bundle's re-ranker takes
    (``index.rerank``), None for results in Hamming order."""

    bundle_id: str
    bits: int
    centers: np.ndarray
    centers_version: str
    rerank_candidates: int | None = None

    def __post_init__(self) -> None:
        check_code_bits(self.bits)
        if np.ndim(self.centers) != 2 or not len(self.centers):
            raise ValueError(f"centers must be a (k, head_bits) array with k ≥ 1, got shape {np.shape(self.centers)}")
        check_code_bits(self.head_bits, "head length")
        if self.head_bits > self.bits:
            raise ValueError(f"a head of {self.head_bits} bits does not fit {self.bits}-bit codes")
        if self.rerank_candidates is not None and self.rerank_candidates < 1:
            raise ValueError(f"rerank_candidates must be positive, got {self.rerank_candidates}")

    @property
    def head_bits(self) -> int:
        return int(np.shape(self.centers)[1])
