"""CMFH — Collective Matrix Factorization Hashing (Ding, Guo, Zhou; CVPR 2014), unsupervised.

One of the shallow baselines of the UDDH paper's Table III; it is here to check that our MAP@50 and P@10
reproduce a row of that table with the paper's own protocol (docs/results_wikipedia.md), not as a product
method. Row-major (n items × d features):

    min λ‖X_1 − V U_1‖² + (1 − λ)‖X_2 − V U_2‖² + μ(‖V − X_1 P_1‖² + ‖V − X_2 P_2‖²)
        + γ(‖U_1‖² + ‖U_2‖² + ‖P_1‖² + ‖P_2‖² + ‖V‖²)

over the unified latent factors V (n × bits), the bases U_i and the hash projections P_i, by alternating
exact block minimisers (each a ridge solve), so the objective never increases. Each modality's hash
function is sign((x − mean_i) P_i), a :class:`LinearHashFunction` (exported like the ``cca`` baseline).
Settings and their source: docs/methods/cmfh.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.methods.base import TrainedHasher, check_features
from training.methods.baselines import LinearHashFunction


@dataclass(frozen=True)
class CMFHConfig:
    """λ weighs image against text reconstruction, μ the factorisation against the linear projections,
    γ the ridge on every factor; iterations stop early when the objective falls by less than
    ``tolerance`` (relative)."""

    bits: int
    image_weight: float = 0.5  # λ
    projection_weight: float = 100.0  # μ
    ridge: float = 0.01  # γ
    iterations: int = 100
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ValueError(f"CMFH needs at least one bit, {self.bits} asked")
        if not 0 < self.image_weight < 1:
            raise ValueError(f"image_weight (λ) must be in (0, 1), got {self.image_weight}")
        if self.projection_weight <= 0 or self.ridge <= 0:
            raise ValueError("projection_weight (μ) and ridge (γ) must be positive")
        if self.iterations < 1 or self.tolerance < 0:
            raise ValueError("iterations must be positive and tolerance non-negative")


def _ridge_solve(a: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    """argmin_W ‖A W − B‖² + ridge ‖W‖² = (AᵀA + ridge I)⁻¹ AᵀB."""
    return np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ b)


def objective(xs: tuple[np.ndarray, np.ndarray], v: np.ndarray, us: list, ps: list, config: CMFHConfig) -> float:
    """The CMFH objective (module notes) of centred features ``xs`` at the factors given."""
    weights = (config.image_weight, 1 - config.image_weight)
    fit = sum(w * float(((x - v @ u) ** 2).sum()) for w, x, u in zip(weights, xs, us, strict=True))
    projection = config.projection_weight * sum(float(((v - x @ p) ** 2).sum()) for x, p in zip(xs, ps, strict=True))
    ridge = config.ridge * sum(float((m**2).sum()) for m in (*us, *ps, v))
    return fit + projection + ridge


def train_cmfh(image: np.ndarray, text: np.ndarray, config: CMFHConfig, seed: int = 0) -> TrainedHasher:
    """Alternate U_i, V, P_i (each its exact minimiser given the others) from a seeded random V."""
    x1, x2 = check_features("image", image), check_features("text", text)
    if len(x1) != len(x2):
        raise ValueError(f"CMFH needs paired rows: {len(x1)} images vs {len(x2)} texts")
    means = (x1.mean(0), x2.mean(0))
    xs = (x1 - means[0], x2 - means[1])
    lam, mu, gamma = config.image_weight, config.projection_weight, config.ridge
    weights = (lam, 1 - lam)
    v = np.random.default_rng(seed).random((len(x1), config.bits))
    ps = [_ridge_solve(x, v, gamma / mu) for x in xs]
    history: list[dict] = []
    for iteration in range(1, config.iterations + 1):
        us = [_ridge_solve(v, x, gamma / w) for w, x in zip(weights, xs, strict=True)]
        gram = sum(w * u @ u.T for w, u in zip(weights, us, strict=True)) + (2 * mu + gamma) * np.eye(config.bits)
        rhs = sum(w * x @ u.T for w, x, u in zip(weights, xs, us, strict=True)) + mu * (xs[0] @ ps[0] + xs[1] @ ps[1])
        v = np.linalg.solve(gram, rhs.T).T  # gram is symmetric
        ps = [_ridge_solve(x, v, gamma / mu) for x in xs]
        history.append({"iteration": iteration, "objective": objective(xs, v, us, ps, config)})
        if iteration > 1 and history[-2]["objective"] - history[-1]["objective"] <= config.tolerance * abs(
            history[-2]["objective"]
        ):
            break
    encoders = {m: LinearHashFunction(mean, p) for m, mean, p in zip(("image", "text"), means, ps, strict=True)}
    config_fields = {"bits": config.bits, "image_weight": lam, "projection_weight": mu, "ridge": gamma}
    return TrainedHasher("cmfh", config.bits, encoders, config_fields | {"seed": seed}, history)
