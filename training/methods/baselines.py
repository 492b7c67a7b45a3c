"""Reference points every trained method must beat, sharing the trainers' interface: ``lsh`` (random
hyperplanes drawn independently per modality, so cross-modal retrieval sits at the label prior) and
``cca`` (the classic CCA hashing baseline: top canonical directions thresholded at the mean; bits past
its r = min(dims) directions are random hyperplanes through the CCA space weighted by canonical
correlation). More in ``docs/methods/baselines.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from training.methods.base import TrainedHasher, check_features
from training.methods.onnx_model import hash_function_model

_RIDGE = 1e-3  # relative ridge on covariances; BoW covariances are singular


@dataclass(frozen=True)
class LinearHashFunction:
    """``real(x) = (x − mean) P``."""

    mean: np.ndarray
    projection: np.ndarray

    @property
    def bits(self) -> int:
        return self.projection.shape[1]

    @property
    def input_dim(self) -> int:
        return self.projection.shape[0]

    def real_codes(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) @ self.projection

    def onnx_graph(self) -> onnx.ModelProto:
        """:meth:`real_codes` as an ONNX graph, computed in float64."""
        nodes = [
            helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.DOUBLE),
            helper.make_node("Sub", ["x", "mean"], ["centred"]),
            helper.make_node("MatMul", ["centred", "projection"], [OUTPUT_NAME]),
        ]
        initializers = {
            "mean": self.mean.astype(np.float64),
            "projection": self.projection.astype(np.float64),
        }
        return hash_function_model(nodes, initializers, self.input_dim, self.bits)


def train_lsh(image: np.ndarray, text: np.ndarray, bits: int, seed: int = 0) -> TrainedHasher:
    rng = np.random.default_rng(seed)
    encoders = {}
    for name, x in (("image", image), ("text", text)):
        x = check_features(name, x)
        encoders[name] = LinearHashFunction(x.mean(0), rng.normal(size=(x.shape[1], bits)))
    return TrainedHasher(method="lsh", bits=bits, encoders=encoders, config={"seed": seed})


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(cov)
    return (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def train_cca(image: np.ndarray, text: np.ndarray, bits: int, seed: int | np.random.Generator = 0) -> TrainedHasher:
    """CCA hashing; bits past the r canonical directions are correlation-weighted random hyperplanes
    of the CCA space (module notes), drawn from ``seed`` (a generator is drawn from only then)."""
    x, y = check_features("image", image), check_features("text", text)
    if len(x) != len(y):
        raise ValueError(f"CCA needs paired rows: {len(x)} images vs {len(y)} texts")
    if bits < 1:
        raise ValueError(f"CCA needs at least one bit, {bits} asked")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = len(x)

    def regularised(c: np.ndarray) -> np.ndarray:
        return c + _RIDGE * np.trace(c) / len(c) * np.eye(len(c))

    wx = _inverse_sqrt(regularised(xc.T @ xc / n))
    wy = _inverse_sqrt(regularised(yc.T @ yc / n))
    # The singular values are the (ridge-regularised) canonical correlations ρ_j: 0 for a null direction.
    u, correlation, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy, full_matrices=False)
    directions = min(bits, len(correlation))
    px, py = wx @ u[:, :directions], wy @ vt[:directions].T
    if bits > directions:
        hyperplanes = correlation[:, None] * np.random.default_rng(seed).normal(size=(directions, bits - directions))
        px, py = np.hstack([px, px @ hyperplanes]), np.hstack([py, py @ hyperplanes])
    encoders = {"image": LinearHashFunction(mx, px), "text": LinearHashFunction(my, py)}
    config = {"ridge": _RIDGE} | ({"seed": seed} if isinstance(seed, int) else {})
    return TrainedHasher(method="cca", bits=bits, encoders=encoders, config=config)
