"""RBF anchor features and the kernel-linear hash function shared by the shallow methods (DSFH, AMSH).

Both papers map each modality to ``φ(x) = [exp(−‖x − a_j‖² / 2σ²)]_j`` over h anchors drawn at random
from that modality's training samples, with σ the mean distance between training samples and anchors
(AMSH §III-D; DSFH leaves σ "from data", and we use the same rule). The hash function of a modality is
then linear in φ: ``real(x) = φ(x) P + b`` and the code is its sign (``training.codes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK = 4096  # rows per block when forming kernel features, bounds memory at O(chunk × h)


def _sq_distances(x: np.ndarray, anchors: np.ndarray, anchor_sq: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * (x @ anchors.T) + anchor_sq[None, :]
    return np.maximum(d2, 0.0)


@dataclass(frozen=True)
class RBFKernelMap:
    """``x ↦ exp(−‖x − a_j‖² / 2σ²)`` for the anchors ``a_j``; float64 throughout for exact export."""

    anchors: np.ndarray  # (h, d)
    sigma: float

    @classmethod
    def fit(cls, x: np.ndarray, n_anchors: int, rng: np.random.Generator) -> RBFKernelMap:
        """Anchors are ``n_anchors`` distinct training rows; σ is their mean distance to the data."""
        x = np.asarray(x, dtype=np.float64)
        if n_anchors > x.shape[0]:
            raise ValueError(f"{n_anchors} anchors requested but only {x.shape[0]} training samples")
        anchors = x[rng.choice(x.shape[0], size=n_anchors, replace=False)].copy()
        anchor_sq = (anchors * anchors).sum(1)
        total, count = 0.0, 0
        for start in range(0, x.shape[0], _CHUNK):
            d = np.sqrt(_sq_distances(x[start : start + _CHUNK], anchors, anchor_sq))
            total, count = total + d.sum(), count + d.size
        sigma = total / count
        if not sigma > 0:
            raise ValueError("all training samples coincide with the anchors: kernel width would be 0")
        return cls(anchors=anchors, sigma=float(sigma))

    @property
    def dim(self) -> int:
        return self.anchors.shape[0]

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.anchors.shape[1]:
            raise ValueError(f"expected features of shape (n, {self.anchors.shape[1]}), got {x.shape}")
        anchor_sq = (self.anchors * self.anchors).sum(1)
        out = np.empty((x.shape[0], self.dim))
        for start in range(0, x.shape[0], _CHUNK):
            d2 = _sq_distances(x[start : start + _CHUNK], self.anchors, anchor_sq)
            out[start : start + _CHUNK] = np.exp(d2 / (-2.0 * self.sigma**2))
        return out


@dataclass(frozen=True)
class KernelHashFunction:
    """One modality's out-of-sample hash function: ``real(x) = φ(x) P + b``."""

    kernel: RBFKernelMap
    projection: np.ndarray  # (h, bits)
    bias: np.ndarray  # (bits,)

    @property
    def bits(self) -> int:
        return self.projection.shape[1]

    @property
    def input_dim(self) -> int:
        return self.kernel.anchors.shape[1]

    def real_codes(self, x: np.ndarray) -> np.ndarray:
        return self.kernel.transform(x) @ self.projection + self.bias
