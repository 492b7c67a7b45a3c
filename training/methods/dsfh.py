"""DSFH — Dual Semantic Fusion Hashing (Liu, Gong, Cao, Ren, Peng, Sun; IJCAI 2024): supervised
kernel-linear cross-modal hashing.

Per modality t, RBF anchor features X^t, codes H^t, a projection W^t and consensus codes B minimise
Σ_t ‖H^t − W^t X^t‖² + α ‖Bᵀ H^t − r S‖² with S = YᵀY + γ LᵀL (instance-level label cosine plus
label-cluster similarity, never formed n × n). Training alternates W^t (Procrustes), H^t (eigen solve)
and B (sign); the hash functions are ridge regressions of B on X^t. Every matrix here is the paper's
transposed (row-major).

The paper's vague or inconsistent points and how they are read here (constraint shapes, Eq. 10, the
W-step surrogate, S_I as a cosine, label clustering, initialisation, rank deficiency, Eq. 18):
``docs/methods/dsfh.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import linalg, sparse
from sklearn.cluster import KMeans
from tqdm import tqdm

from index.codes import to_signs
from training.methods.base import MODALITIES, TextViews, TrainedHasher, check_features, check_labels, check_views
from training.methods.kernel import KernelHashFunction, RBFKernelMap

_RANK_TOL = 1e-10  # relative eigenvalue threshold for the rank of G^t U (G^t)ᵀ in the H-step


@dataclass(frozen=True)
class DSFHConfig:
    """Hyper-parameters; defaults are the paper's MIRFlickr-25K setting (§4.3, γ = 1 from §3.2)."""

    bits: int
    n_anchors: int = 1500
    iterations: int = 10
    alpha: float = 1e-3
    lam: float = 1e-3  # λ of the out-of-sample ridge regression (Eq. 17–18)
    n_clusters: int = 400  # k of the label K-means
    gamma: float = 1.0  # weight of the cluster-level similarity Lᵀ L (Eq. 3)
    kmeans_n_init: int = 1  # one K-means++ start keeps the clustering under a second at n = 6000, k = 400
    fit_text_views: bool = True  # fit the text hash function on the items' text views too, when there are any

    def __post_init__(self) -> None:
        if self.bits < 1:
            raise ValueError(f"bits must be positive, got {self.bits}")
        if self.bits > self.n_anchors:
            raise ValueError(
                f"{self.bits} bits exceed {self.n_anchors} anchors: W needs at least as many anchors as bits"
            )
        if self.iterations < 1 or self.n_clusters < 1 or self.kmeans_n_init < 1:
            raise ValueError("iterations, n_clusters and kmeans_n_init must be positive")
        if not (self.alpha >= 0 and self.gamma >= 0 and self.lam > 0):
            raise ValueError(f"need alpha ≥ 0, gamma ≥ 0, lam > 0; got {self.alpha}, {self.gamma}, {self.lam}")


@dataclass(frozen=True)
class FusedSemantics:
    """The joint similarity S = Ŷ Ŷᵀ + γ L Lᵀ (paper: Yᵀ Y + γ Lᵀ L), kept factored so it is never n × n."""

    labels: np.ndarray  # (n, c) L2-normalised label rows: Ŷ Ŷᵀ is the cosine similarity S_I
    clusters: sparse.csr_matrix  # (n, k) one-hot cluster assignment: L Lᵀ is S_C
    gamma: float

    def product(self, m: np.ndarray) -> np.ndarray:
        """S m for m (n, r) in O(n·(c + k)·r): the reordering of Eq. 11."""
        return self.labels @ (self.labels.T @ m) + self.gamma * (self.clusters @ (self.clusters.T @ m))

    def sq_norm(self) -> float:
        """‖S‖²_F = ‖ŶᵀŶ‖² + 2γ‖LᵀŶ‖² + γ²‖LᵀL‖², all from c × c, k × c and k × k matrices."""
        yy = self.labels.T @ self.labels
        ly = np.asarray(self.clusters.T @ self.labels)
        sizes = np.asarray(self.clusters.sum(axis=0)).ravel()
        return float((yy**2).sum() + 2 * self.gamma * (ly**2).sum() + self.gamma**2 * (sizes**2).sum())


def fuse_semantics(labels: np.ndarray, n_clusters: int, gamma: float, seed: int, n_init: int) -> FusedSemantics:
    """Instance-level (cosine) plus cluster-level (label K-means) similarity of §3.2."""
    labels = np.asarray(labels, dtype=np.float64)
    n = labels.shape[0]
    distinct, inverse, counts = np.unique(labels, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if n_clusters >= distinct.shape[0]:
        assign = inverse
    else:
        kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed)
        assign = kmeans.fit(distinct, sample_weight=counts).labels_[inverse]
    clusters = sparse.csr_matrix((np.ones(n), (np.arange(n), assign)), shape=(n, int(assign.max()) + 1))
    norms = np.linalg.norm(labels, axis=1, keepdims=True)
    return FusedSemantics(labels / np.where(norms > 0, norms, 1.0), clusters, gamma)


def update_W(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Eq. 6–8: argmax tr(wᵀ xᵀ h) over orthonormal columns — orthogonal Procrustes via the SVD of xᵀh."""
    q, _, pt = np.linalg.svd(x.T @ h, full_matrices=False)
    return q @ pt


def solve_orthogonal_balanced(g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eq. 10–13: argmax ⟨h, g⟩ s.t. hᵀh = nI, hᵀ1 = 0, i.e. √n times the polar factor of the centred g."""
    n, r = g.shape
    gc = g - g.mean(axis=0)  # g U
    theta, z = np.linalg.eigh(gc.T @ gc)  # Eq. 12
    keep = theta > _RANK_TOL * float((g * g).sum())
    j = gc @ (z[:, keep] / np.sqrt(theta[keep]))
    if not keep.all():  # J̃: random orthonormal directions orthogonal to 1 and J
        extra = rng.standard_normal((n, r - j.shape[1]))
        q, _ = np.linalg.qr(np.column_stack([np.full(n, 1 / np.sqrt(n)), j, extra]))
        j = np.column_stack([j, q[:, 1 + j.shape[1] :]])
        z = np.column_stack([z[:, keep], z[:, ~keep]])
    return np.sqrt(n) * (j @ z.T)  # Eq. 13


def update_H(xw: np.ndarray, sb: np.ndarray, alpha: float, rng: np.random.Generator) -> np.ndarray:
    """Eq. 9–13 for one modality: G = XW + αr·SB (Eq. 11 with B, see docs/methods/dsfh.md), then the eigen solve."""
    return solve_orthogonal_balanced(xw + alpha * sb.shape[1] * sb, rng)


def update_B(semantics: FusedSemantics, hs: list[np.ndarray]) -> np.ndarray:
    """Eq. 16: B = sgn(S Σ_t H^t) (αr > 0 cannot change a sign; exact zeros give −1, as in ``to_signs``)."""
    return to_signs(semantics.product(sum(hs))).astype(np.float64)


def specificity_loss(h: np.ndarray, xw: np.ndarray) -> float:
    """Literal Eq. 5 term ‖H − WX‖² of one modality."""
    return float(((h - xw) ** 2).sum())


def specificity_surrogate(h: np.ndarray, xw: np.ndarray, x_sq_norm: float) -> float:
    """Eq. 5 term with ‖WX‖² read as ‖X‖² (the paper's Eq. 5 → 6 step); exactly what the W-step minimises."""
    return float((h * h).sum() - 2 * (h * xw).sum() + x_sq_norm)


def semantic_loss(b: np.ndarray, h: np.ndarray, sb: np.ndarray, s_sq_norm: float) -> float:
    """‖BᵀH − rS‖² of one modality from r × r products: ⟨BᵀB, HᵀH⟩ − 2r⟨H, SB⟩ + r²‖S‖² (no n × n)."""
    r = b.shape[1]
    return float(((b.T @ b) * (h.T @ h)).sum() - 2 * r * (h * sb).sum() + r * r * s_sq_norm)


def fit_hash_projection(x: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """Eq. 18: P = (xᵀx + λI)⁻¹ xᵀ b, the ridge regression of the consensus codes on kernel features."""
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += lam
    return linalg.solve(gram, x.T @ b, assume_a="pos")


def train_dsfh(
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray,
    config: DSFHConfig,
    seed: int = 0,
    text_views: TextViews | None = None,
    progress: bool = False,
) -> TrainedHasher:
    """Train on paired rows of ``image``, ``text`` and multi-hot ``labels``; all input is checked up front.

    With ``text_views`` (and ``config.fit_text_views``) the text hash function's ridge regression (Eq. 18)
    also maps every view of an item to that item's code, so that a short query lands where its item's
    full text does; the codes B and the image hash function do not see them. ``progress`` shows a bar
    over the steps (kernel features, label clusters, each iteration, hash functions): at OpenClipart's size
    (timed on random features of its shape) the two before the iterations take 10 of 27 s, the last 4."""
    feats = {"image": check_features("image", image), "text": check_features("text", text)}
    n = feats["image"].shape[0]
    if feats["text"].shape[0] != n:
        raise ValueError(f"image and text must be paired row by row: {n} vs {feats['text'].shape[0]} rows")
    y = check_labels("training", labels, n)
    if config.n_anchors > n:
        raise ValueError(f"{config.n_anchors} anchors requested but only {n} training items")
    if config.bits >= n:
        raise ValueError(f"{config.bits} bits need more than {n} training items (balanced orthogonal H)")
    if config.n_clusters > n:
        raise ValueError(f"{config.n_clusters} label clusters requested but only {n} training items")

    views = check_views(text_views, feats["text"]) if config.fit_text_views else None
    bar = tqdm(total=config.iterations + 3, desc=f"dsfh {config.bits} bits", unit="step", disable=not progress)
    r, rng = config.bits, np.random.default_rng(seed)
    kernels, xs = {}, {}
    for m in MODALITIES:
        kernels[m], xs[m] = RBFKernelMap.fit_transform(feats[m], config.n_anchors, rng)
    x_sq = {m: float((xs[m] ** 2).sum()) for m in MODALITIES}
    bar.update()
    semantics = fuse_semantics(y, config.n_clusters, config.gamma, seed, config.kmeans_n_init)
    s_sq = semantics.sq_norm()
    bar.update()

    b = rng.choice([-1.0, 1.0], size=(n, r))
    hs = {m: solve_orthogonal_balanced(rng.standard_normal((n, r)), rng) for m in MODALITIES}
    sb = semantics.product(b)
    history: list[dict] = []
    for iteration in range(1, config.iterations + 1):
        xw = {}
        for m in MODALITIES:
            xw[m] = xs[m] @ update_W(xs[m], hs[m])
            hs[m] = update_H(xw[m], sb, config.alpha, rng)
        b_new = update_B(semantics, [hs[m] for m in MODALITIES])
        flips = int((b_new != b).sum())
        b, sb = b_new, semantics.product(b_new)
        specific = sum(specificity_loss(hs[m], xw[m]) for m in MODALITIES)
        surrogate = sum(specificity_surrogate(hs[m], xw[m], x_sq[m]) for m in MODALITIES)
        semantic = config.alpha * sum(semantic_loss(b, hs[m], sb, s_sq) for m in MODALITIES)
        history.append(
            {
                "iteration": iteration,
                "objective": surrogate + semantic,
                "objective_eq4": specific + semantic,
                "specificity": specific,
                "semantic": semantic,
                "bit_flips": flips,
            }
        )
        bar.update()

    targets = {m: (xs[m], b) for m in MODALITIES}
    if views is not None:
        view_x = kernels["text"].transform(views.features)
        targets["text"] = (np.vstack([xs["text"], view_x]), np.vstack([b, b[views.item]]))
    encoders = {
        m: KernelHashFunction(kernels[m], fit_hash_projection(*targets[m], config.lam), np.zeros(r)) for m in MODALITIES
    }
    bar.update()
    bar.close()
    return TrainedHasher(
        method="dsfh",
        bits=r,
        encoders=encoders,
        config=dataclasses.asdict(config) | {"seed": seed},
        history=history,
    )
