"""RBF anchor features and the kernel-linear hash function shared by the shallow methods (DSFH, AMSH).

Both papers map each modality to ``φ(x) = [exp(−‖x − a_j‖² / 2σ²)]_j`` over h anchors drawn at random
from that modality's training samples, with σ the mean distance between training samples and anchors
(AMSH §III-D; DSFH leaves σ "from data", and we use the same rule). The hash function of a modality is
then linear in φ: ``real(x) = φ(x) P + b`` and the code is its sign (``index.codes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from training.methods.onnx_model import hash_function_model

_CHUNK = 4096  # rows per block when forming distances, bounds temporaries at O(chunk × h)


def _chunked_sq_distances(x: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """‖x_i − a_j‖² as ‖x‖² − 2 x·a + ‖a‖², clipped at 0; row blocks bound the temporaries."""
    anchor_sq = (anchors * anchors).sum(1)
    out = np.empty((x.shape[0], anchors.shape[0]))
    for start in range(0, x.shape[0], _CHUNK):
        block = x[start : start + _CHUNK]
        d2 = (block * block).sum(1, keepdims=True) - 2.0 * (block @ anchors.T) + anchor_sq[None, :]
        out[start : start + _CHUNK] = np.maximum(d2, 0.0)
    return out


@dataclass(frozen=True)
class RBFKernelMap:
    """``x ↦ exp(−‖x − a_j‖² / 2σ²)`` for the anchors ``a_j``; float64 throughout for exact export."""

    anchors: np.ndarray  # (h, d)
    sigma: float

    @classmethod
    def fit_transform(cls, x: np.ndarray, n_anchors: int, rng: np.random.Generator) -> tuple[RBFKernelMap, np.ndarray]:
        """Anchors are ``n_anchors`` distinct training rows; σ is their mean distance to the data.

        Returns the map and the training rows' kernel features, computed from the same squared
        distances that give σ (so the n × h distances are computed once).
        """
        x = np.asarray(x, dtype=np.float64)
        if n_anchors > x.shape[0]:
            raise ValueError(f"{n_anchors} anchors requested but only {x.shape[0]} training samples")
        anchors = x[rng.choice(x.shape[0], size=n_anchors, replace=False)].copy()
        d2 = _chunked_sq_distances(x, anchors)
        sigma = float(np.sqrt(d2).mean())
        if not sigma > 0:
            raise ValueError("all training samples coincide with the anchors: kernel width would be 0")
        kernel = cls(anchors=anchors, sigma=sigma)
        return kernel, kernel._from_sq_distances(d2)

    @property
    def dim(self) -> int:
        return self.anchors.shape[0]

    def _from_sq_distances(self, d2: np.ndarray) -> np.ndarray:
        return np.exp(d2 / (-2.0 * self.sigma**2), out=d2)

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.anchors.shape[1]:
            raise ValueError(f"expected features of shape (n, {self.anchors.shape[1]}), got {x.shape}")
        return self._from_sq_distances(_chunked_sq_distances(x, self.anchors))


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

    def onnx_graph(self) -> onnx.ModelProto:
        """:meth:`real_codes` as an ONNX graph, computed in float64."""
        # exp(−max(‖x‖² − 2 x·Aᵀ + ‖a‖², 0) / 2σ²) P + b, the order of RBFKernelMap.transform.
        anchors = self.kernel.anchors
        # Anchors are training rows, which come from float32 features: stored as float32 (half the bytes)
        # and cast back in the graph, exactly. Anything not float32-exact stays float64.
        compact = anchors.T.astype(np.float32)
        anchors_t = compact if np.array_equal(compact.astype(np.float64), anchors.T) else anchors.T.copy()
        # Bag-of-words anchors are small integers: for integer queries (our featurizer's counts) x·Aᵀ is an
        # integer below 2^24, exact in a float32 product, which reads half the bytes of a float64 one. The
        # query's matrix product is memory-bound, so this halves a text query's encoding time.
        integral = anchors_t.dtype == np.float32 and np.array_equal(anchors, np.round(anchors))
        integral = integral and float(np.abs(anchors).sum(1).max()) * 64 < 2**24
        product = (
            [helper.make_node("MatMul", [INPUT_NAME, "anchors_stored"], ["xa32"]),
             helper.make_node("Cast", ["xa32"], ["xa"], to=TensorProto.DOUBLE)]
            if integral
            else [helper.make_node("Cast", ["anchors_stored"], ["anchors_t"], to=TensorProto.DOUBLE),
                  helper.make_node("MatMul", ["x", "anchors_t"], ["xa"])]
        )  # fmt: skip
        nodes = [
            helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.DOUBLE),
            helper.make_node("Mul", ["x", "x"], ["x2"]),
            helper.make_node("ReduceSum", ["x2", "axis1"], ["x_sq"], keepdims=1),
            *product,
            helper.make_node("Mul", ["xa", "two"], ["xa2"]),
            helper.make_node("Sub", ["x_sq", "xa2"], ["partial"]),
            helper.make_node("Add", ["partial", "anchor_sq"], ["d2_raw"]),
            helper.make_node("Max", ["d2_raw", "zero"], ["d2"]),
            helper.make_node("Div", ["d2", "minus_two_sigma_sq"], ["scaled"]),
            helper.make_node("Exp", ["scaled"], ["phi"]),
            helper.make_node("MatMul", ["phi", "projection"], ["projected"]),
            helper.make_node("Add", ["projected", "bias"], [OUTPUT_NAME]),
        ]
        initializers = {
            "axis1": np.array([1], dtype=np.int64),
            "anchors_stored": anchors_t,
            "two": np.array(2.0),
            "anchor_sq": (anchors * anchors).sum(1),
            "zero": np.array(0.0),
            "minus_two_sigma_sq": np.array(-2.0 * self.kernel.sigma**2),
            "projection": self.projection.astype(np.float64),
            "bias": self.bias.astype(np.float64),
        }
        return hash_function_model(nodes, initializers, self.input_dim, self.bits)
