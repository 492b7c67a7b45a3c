"""AMSH — Adaptive Marginalized Semantic Hashing (Luo, Zhang, Li, Jia, Chen; IEEE TMM 2023), for paired
or unpaired data.

Algorithm 1 has two steps. 1: hash codes from labels (Eq. 10): per modality a latent V_i, codes B_i, a
class projection P_i and non-negative label margins E_i, coupled across modalities only through the
label similarities S_ij = L̃_i L̃_jᵀ, so rows are never matched and the modalities may differ in samples
and order (updates Eq. 12, Theorem 3.1, Eq. 18, Eq. 21). 2: kernel hash functions (Eq. 25): per
modality, RBF anchor features regressed onto the margin-relaxed codes B + B ⊙ M (Eq. 26, 27).
Row-major throughout: every matrix is the paper's transposed.

Where the paper is vague (pair counting, the per-class shared initialisation and why, rank deficiency,
the ridge and intercept of step 2, unlabelled rows), as settled here: ``docs/methods/amsh.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from index.codes import to_signs
from training.methods.base import MODALITIES, TrainedHasher, check_features, check_labels
from training.methods.kernel import KernelHashFunction, RBFKernelMap

INIT_CONTENT_WEIGHT = 1e-3  # ε: weight of the content features in the initial V (docs/methods/amsh.md)


@dataclass(frozen=True)
class AMSHConfig:
    """Hyper-parameters. The defaults are the paper's (§IV-B), except the ridge (docs/methods/amsh.md).

    λ and β weight terms that grow with the number of samples. The paper tuned them on 16k–185k items.
    On a few hundred items, at 1e-3 the similarity terms are too weak against η‖B − V‖² and the codes
    stay close to their start. 1e-2 works there.
    """

    bits: int
    eta: float = 1.0  # η: weight of ‖B − V‖², i.e. how closely the codes follow the latents
    lam: float = 1e-3  # λ: intra-modal similarity preservation
    beta: float = 1e-3  # β: inter-modal similarity preservation
    n_anchors: int = 1500  # RBF anchors per modality (as DSFH)
    iterations: int = 15  # τ for step 1 (codes)
    function_iterations: int = 15  # τ for step 2 (hash functions)
    ridge: float = 0.01  # ξ in step 2

    def __post_init__(self) -> None:
        for name in ("bits", "n_anchors", "iterations", "function_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.eta > 0:
            raise ValueError(f"eta must be > 0 (the B-step ignores V otherwise), got {self.eta}")
        for name in ("lam", "beta"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0 (the kernel Gram matrix is singular), got {self.ridge}")


# ----------------------------------------------------------------------------------------------
# Step 1: hash codes from labels


@dataclass
class ModalityCodes:
    """One modality's step-1 variables (row-major: the paper's matrices transposed)."""

    labels: np.ndarray  # L (n, c), 0/1
    unit_labels: np.ndarray  # L̃ (n, c), rows of unit norm (zero for unlabelled rows)
    v: np.ndarray  # V (n, r), VᵀV = n I, 1ᵀV = 0
    b: np.ndarray  # B (n, r), ±1 as float64
    e: np.ndarray  # E (n, c) ≥ 0, label margins
    p: np.ndarray  # P (r, c), latent → label projection

    @property
    def signs(self) -> np.ndarray:
        """R of Eq. 3: the direction in which each margin pushes its label (+1 positive, −1 negative)."""
        return 2.0 * self.labels - 1.0

    @property
    def targets(self) -> np.ndarray:
        """The marginalised regression targets L + R ⊙ E."""
        return self.labels + self.signs * self.e


def unit_rows(labels: np.ndarray) -> np.ndarray:
    """Eq. 6: L̃, so that L̃_i L̃_jᵀ is the cosine label similarity S_ij (never formed: it is n_i × n_j)."""
    norms = np.linalg.norm(labels, axis=1, keepdims=True)
    return np.divide(labels, norms, out=np.zeros_like(labels, dtype=np.float64), where=norms > 0)


def solve_orthogonal_centered(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Theorem 3.1: argmax tr(ZᵀV) s.t. VᵀV = n I, 1ᵀV = 0, for row-major Z and V of shape (n, r).

    With J Z = K ∇^½ Nᵀ (eigendecomposition of the r×r matrix ZᵀJZ), the solution is √n [K K̃][N Ñ]ᵀ.
    This takes a few n×r×r products (BLAS-3), cheaper than a LAPACK SVD of the tall Z. Squaring Z loses
    digits when Z is ill-conditioned, so one polar correction restores VᵀV = n I to machine precision.
    """
    n, r = z.shape
    zc = z - z.mean(0)
    evals, evecs = np.linalg.eigh(zc.T @ zc)
    keep = evals > max(evals[-1], 0.0) * n * np.finfo(np.float64).eps
    if keep.all():
        v = zc @ ((np.sqrt(n) * evecs / np.sqrt(evals)) @ evecs.T)
    else:
        # Rank-deficient: Ñ is the remaining eigenvectors, K̃ random and orthogonal to 1 and to K.
        k = zc @ (evecs[:, keep] / np.sqrt(evals[keep]))
        basis = np.linalg.qr(np.column_stack([np.ones(n), k]))[0]
        fill = rng.standard_normal((n, r - k.shape[1]))
        for _ in range(2):  # projecting twice leaves no trace of `basis` at machine precision
            fill -= basis @ (basis.T @ fill)
        k = np.column_stack([k, np.linalg.qr(fill)[0]])
        v = np.sqrt(n) * (k @ np.column_stack([evecs[:, keep], evecs[:, ~keep]]).T)
    evals, evecs = np.linalg.eigh(v.T @ v / n)
    return v @ ((evecs / np.sqrt(evals)) @ evecs.T)


def draw_class_directions(classes: int, bits: int, rng: np.random.Generator) -> np.ndarray:
    """G (c, r): one random direction per class, drawn once and shared by all modalities."""
    return rng.standard_normal((classes, bits))


def init_codes(
    labels: np.ndarray,
    features: np.ndarray,
    class_directions: np.ndarray,
    config: AMSHConfig,
    rng: np.random.Generator,
) -> ModalityCodes:
    """Feasible start: V_0 is the feasible point (Theorem 3.1) closest to L̃G + ε·RFF (docs/methods/amsh.md),
    B_0 the B-step at V_0.

    L̃G gives every row the mean of its classes' random directions G, which all modalities share, so
    the modalities start in one common basis. The random Fourier features (RFF) are smooth random
    functions of the row's own features, scaled by ε = ``INIT_CONTENT_WEIGHT``. They only matter in
    the directions that L̃G leaves empty (bits > rank L̃, classes with identical columns), and fill them
    by content rather than by row index. Their bandwidth is the RMS distance of rows to their mean, so
    the cosine's arguments are O(1) radians and nonlinear enough to give rank r even when d < r.
    """
    labels = np.asarray(labels, dtype=np.float64)
    unit = unit_rows(labels)
    x = np.asarray(features, dtype=np.float64)
    x = x - x.mean(0)
    scale = float(np.sqrt((x * x).sum(1).mean()))
    bits = config.bits
    omega = rng.standard_normal((x.shape[1], bits)) / (scale if scale > 0 else 1.0)
    phase = rng.uniform(0.0, 2.0 * np.pi, bits)
    content = np.cos(x @ omega + phase)
    v = solve_orthogonal_centered(unit @ class_directions + INIT_CONTENT_WEIGHT * content, rng)
    n, c = labels.shape
    state = ModalityCodes(
        labels=labels,
        unit_labels=unit,
        v=v,
        b=np.empty_like(v),
        e=np.zeros((n, c)),
        p=np.zeros((bits, c)),
    )
    state.b = update_b(state, config)
    state.p = update_p(state)
    return state


def update_p(state: ModalityCodes) -> np.ndarray:
    """Eq. 12: least squares P for fixed V. It reduces to Vᵀ(L + R⊙E)/n because VᵀV = n I."""
    return state.v.T @ state.targets / state.v.shape[0]


def v_step_target(state: ModalityCodes, others: Sequence[ModalityCodes], config: AMSHConfig) -> np.ndarray:
    """Z of Eq. 13 (transposed): the linear coefficient of V. Under VᵀV = n I, every quadratic term in V
    is constant, so maximising tr(ZᵀV) minimises Eq. 10 in V."""
    r = state.v.shape[1]
    yt = state.unit_labels
    z = state.targets @ state.p.T + config.eta * state.b + config.lam * r * (yt @ (yt.T @ state.b))
    for other in others:
        z += config.beta * r * (yt @ (other.unit_labels.T @ other.v))
    return z


def update_v(
    state: ModalityCodes, others: Sequence[ModalityCodes], config: AMSHConfig, rng: np.random.Generator
) -> np.ndarray:
    """Theorem 3.1 applied to Eq. 13. ``others`` are the other modalities at their current values."""
    return solve_orthogonal_centered(v_step_target(state, others, config), rng)


def update_b(state: ModalityCodes, config: AMSHConfig) -> np.ndarray:
    """Eq. 18: B = sgn(ηV + λr L̃L̃ᵀV). Exact because ‖BVᵀ‖² = n‖B‖² = n²r is constant for ±1 codes."""
    r = state.v.shape[1]
    yt = state.unit_labels
    return to_signs(config.eta * state.v + config.lam * r * (yt @ (yt.T @ state.v))).astype(np.float64)


def update_e(state: ModalityCodes) -> np.ndarray:
    """Eq. 21: E = max(R ⊙ (VP − L), 0). Entry-wise exact because R² = 1."""
    return np.maximum(state.signs * (state.v @ state.p - state.labels), 0.0)


def _similarity_residual(
    aa: np.ndarray,
    cc: np.ndarray,
    ya_a: np.ndarray,
    yc_c: np.ndarray,
    ya_ya: np.ndarray,
    yc_yc: np.ndarray,
    r: int,
) -> float:
    """‖A Cᵀ − r Ỹ_a Ỹ_cᵀ‖² from the Gram matrices AᵀA, CᵀC, Ỹ_aᵀA, Ỹ_cᵀC, Ỹ_aᵀỸ_a and Ỹ_cᵀỸ_c. The
    n_a × n_c matrices are never formed. Clamped at 0 against rounding when the residual vanishes."""
    value = (aa * cc).sum() - 2.0 * r * (ya_a * yc_c).sum() + r * r * (ya_ya * yc_yc).sum()
    return max(float(value), 0.0)


def code_objective(states: Sequence[ModalityCodes], config: AMSHConfig) -> dict[str, float]:
    """Eq. 10 at the current variables, split into its terms (inter-modal pairs counted once)."""
    terms = {"regression": 0.0, "quantization": 0.0, "intra": 0.0, "inter": 0.0}
    r = states[0].v.shape[1]
    grams = []
    for s in states:
        yt = s.unit_labels
        g = {"vv": s.v.T @ s.v, "bb": s.b.T @ s.b, "yv": yt.T @ s.v, "yb": yt.T @ s.b, "yy": yt.T @ yt}
        grams.append(g)
        terms["regression"] += float(((s.targets - s.v @ s.p) ** 2).sum())
        terms["quantization"] += config.eta * float(((s.b - s.v) ** 2).sum())
        terms["intra"] += config.lam * _similarity_residual(g["bb"], g["vv"], g["yb"], g["yv"], g["yy"], g["yy"], r)
    for i, gi in enumerate(grams):
        for gj in grams[i + 1 :]:
            residual = _similarity_residual(gi["vv"], gj["vv"], gi["yv"], gj["yv"], gi["yy"], gj["yy"], r)
            terms["inter"] += config.beta * residual
    terms["objective"] = sum(terms.values())
    return terms


def learn_codes(
    labels: Sequence[np.ndarray],
    features: Sequence[np.ndarray],
    config: AMSHConfig,
    rngs: Sequence[np.random.Generator],
    shared_rng: np.random.Generator,
) -> tuple[list[ModalityCodes], list[dict]]:
    """Step 1 of Algorithm 1. ``rngs`` are the modalities' own streams. ``shared_rng`` draws the class
    directions G of the initialisation, which all modalities share. Features only break ties in the
    initial V (docs/methods/amsh.md). Returns the final variables and one history record per iteration."""
    g = draw_class_directions(labels[0].shape[1], config.bits, shared_rng)
    states = [init_codes(y, x, g, config, r) for y, x, r in zip(labels, features, rngs, strict=True)]
    history = []
    for iteration in range(1, config.iterations + 1):
        for s in states:
            s.p = update_p(s)
        for i, s in enumerate(states):  # Gauss–Seidel: each V-step sees the others' newest V
            s.v = update_v(s, states[:i] + states[i + 1 :], config, rngs[i])
        for s in states:
            s.b = update_b(s, config)
        for s in states:
            s.e = update_e(s)
        history.append({"stage": "codes", "iteration": iteration, **code_objective(states, config)})
    return states, history


# ----------------------------------------------------------------------------------------------
# Step 2: kernel hash functions with adaptive margins


@dataclass(frozen=True)
class KernelDesign:
    """Centred kernel features of one modality and the Cholesky factor of their ridge Gram matrix.

    The factorisation depends only on the features, so it is done once and reused by every F-step.
    """

    centered: np.ndarray  # Φ − μ (n, h)
    mean: np.ndarray  # μ (h,)
    factor: tuple[np.ndarray, bool]  # cho_factor(ΦcᵀΦc + ξ I)
    ridge: float

    @classmethod
    def build(cls, phi: np.ndarray, ridge: float) -> KernelDesign:
        mean = phi.mean(0)
        centered = phi - mean
        gram = centered.T @ centered
        gram[np.diag_indices_from(gram)] += ridge
        return cls(centered=centered, mean=mean, factor=cho_factor(gram), ridge=ridge)


def update_f(design: KernelDesign, b: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 26 with ridge and intercept: the exact minimiser (W, g0) of
    ‖B + B⊙M − Φc W − 1g0ᵀ‖² + ξ‖W‖². Because Φc is centred, g0 is the mean target."""
    target = b * (1.0 + m)
    offset = target.mean(0)
    w = cho_solve(design.factor, design.centered.T @ (target - offset))
    return w, offset


def predict(design: KernelDesign, w: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The real-valued codes of the training samples, Φc W + 1g0ᵀ."""
    return design.centered @ w + offset


def update_m(b: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Eq. 27: M = max(B ⊙ (ΦW − B), 0). Entry-wise exact because B² = 1."""
    return np.maximum(b * (prediction - b), 0.0)


def _function_objective(b: np.ndarray, m: np.ndarray, prediction: np.ndarray, w: np.ndarray, ridge: float) -> float:
    return float(((b * (1.0 + m) - prediction) ** 2).sum()) + ridge * float((w * w).sum())


def function_objective(design: KernelDesign, b: np.ndarray, m: np.ndarray, w: np.ndarray, offset: np.ndarray) -> float:
    """Eq. 25 for one modality, plus the ridge: the quantity step 2 minimises."""
    return _function_objective(b, m, predict(design, w, offset), w, design.ridge)


def learn_hash_function(
    design: KernelDesign, b: np.ndarray, config: AMSHConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Step 2 of Algorithm 1 for one modality (the modalities are independent here).

    Returns W, the intercept g0, the margins M and the objective after each iteration. The F-step's
    prediction is reused by the M-step and by the objective, so an iteration costs two n×h×r products.
    """
    m = np.zeros_like(b)
    objectives = []
    for _ in range(config.function_iterations):
        w, offset = update_f(design, b, m)
        prediction = predict(design, w, offset)
        m = update_m(b, prediction)
        objectives.append(_function_objective(b, m, prediction, w, design.ridge))
    return w, offset, m, objectives


# ----------------------------------------------------------------------------------------------
# Trainer


def _check_sizes(features: dict[str, np.ndarray], labels: dict[str, np.ndarray], config: AMSHConfig) -> None:
    classes = {m: y.shape[1] for m, y in labels.items()}
    if len(set(classes.values())) != 1:
        raise ValueError(f"label matrices must share their classes, got column counts {classes}")
    if config.bits > config.n_anchors:
        raise ValueError(
            f"bits ({config.bits}) exceeds anchors ({config.n_anchors}): the codes would have rank ≤ anchors"
        )
    for m, x in features.items():
        n = x.shape[0]
        if config.n_anchors > n:
            raise ValueError(f"{config.n_anchors} anchors requested but {m} has only {n} training samples")
        if config.bits >= n:
            raise ValueError(f"{m} has {n} samples: need more than bits ({config.bits}) for balanced codes")


def train_amsh(
    image: np.ndarray,
    image_labels: np.ndarray,
    text: np.ndarray,
    text_labels: np.ndarray,
    config: AMSHConfig,
    seed: int = 0,
) -> TrainedHasher:
    """Train AMSH on two modalities, each with its own samples and labels. Rows are not matched across
    modalities, and only the labels relate them. Paired data is the special case of shared items.

    Each modality draws its random numbers (anchors, initialisation) from its own stream. Reordering
    one modality's rows therefore leaves the other modality's hash function unchanged, up to rounding.
    Its own hash function does change, because its anchors are drawn by row index.
    """
    features = {"image": check_features("image", image), "text": check_features("text", text)}
    raw_labels = {"image": image_labels, "text": text_labels}
    labels = {m: check_labels(m, raw_labels[m], features[m].shape[0]) for m in MODALITIES}
    _check_sizes(features, labels, config)

    # Each modality has its own streams (anchors, initialisation), so neither consumes the other's draws.
    # One more stream draws what the modalities share: the class directions G of the initialisation.
    *children, shared = np.random.SeedSequence(seed).spawn(len(MODALITIES) + 1)
    streams = [child.spawn(2) for child in children]
    kernels, kernel_features = {}, {}
    for i, m in enumerate(MODALITIES):
        rng = np.random.default_rng(streams[i][0])
        kernels[m], kernel_features[m] = RBFKernelMap.fit_transform(features[m], config.n_anchors, rng)
    init_rngs = [np.random.default_rng(streams[i][1]) for i in range(len(MODALITIES))]
    states, history = learn_codes(
        [labels[m] for m in MODALITIES],
        [features[m] for m in MODALITIES],
        config,
        init_rngs,
        np.random.default_rng(shared),
    )

    encoders = {}
    function_objectives = {}
    for m, state in zip(MODALITIES, states, strict=True):
        design = KernelDesign.build(kernel_features.pop(m), config.ridge)
        w, offset, _, function_objectives[m] = learn_hash_function(design, state.b, config)
        encoders[m] = KernelHashFunction(kernel=kernels[m], projection=w, bias=offset - design.mean @ w)
        del design  # its n×h features are the largest allocation: release before the next modality
    for t in range(config.function_iterations):
        per_modality = {m: function_objectives[m][t] for m in MODALITIES}
        history.append(
            {
                "stage": "hash_functions",
                "iteration": t + 1,
                **per_modality,
                "objective": sum(per_modality.values()),
            }
        )
    return TrainedHasher(
        method="amsh",
        bits=config.bits,
        encoders=encoders,
        config={**asdict(config), "seed": seed},
        history=history,
    )
