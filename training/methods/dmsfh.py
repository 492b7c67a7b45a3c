"""DMSFH — Deep Multi-Semantic Fusion-based cross-modal Hashing (Zhu, Cai, Zou, Zhu; Mathematics 2022).

Two networks map an image v_i and a text t_i to tanh-relaxed k-bit codes F_i* and G_i* (the hash layers)
and to c label logits L̂^v_i*, L̂^t_i* (the label layers, training only). With the label similarity
S_ij = 1 iff items i and j share a label, the unified binary code B ∈ {−1, +1}^{n×k} and the graph
Laplacian L = D − S of S (normalised by default, see below), the objective (Eq. 13) is

    L1 + L2 + L3 + γ L4 + β L5,
    L1 = −Σ_ij (S_ij φ_ij − log(1 + e^φ_ij)),  φ_ij = ½ F_i*·G_j*          inter-modal NLL   (Eq. 3)
    L2 = the same with (F, F) and (G, G)                                   intra-modal NLL   (Eq. 5–7)
    L3 = Σ_ij (−L_ij L̂_ij + log(1 + e^L̂_ij)), image and text               label cross-entropy (Eq. 8–10)
    L4 = ½ Σ_ij S_ij ‖b_i − b_j‖² = tr(Bᵀ L B)                              graph regularisation (Eq. 11)
    L5 = ‖B − F‖² + ‖B − G‖²                                                quantisation      (Eq. 12)

optimised alternately (Algorithm 1): every epoch trains the image network with the text side fixed,
then the text network with the image side fixed, then updates B in closed form (Eq. 19).

Each term is a small function over tensors (``inter_modal_loss`` … ``quantization_loss``) and
``objective`` weighs them as Eq. 13; ``update_codes`` is the B step.

Ablations (§4.5): ``label_loss=False`` drops L3 (no label layers at all), ``graph_loss=False`` drops L4
(the B step is then sign(F + G)); both off is the paper's DMSFH-P. On OpenClipart (64 bits, seed 0, CPU
preset, query set) neither switch moved mAP by more than 0.01 either way (full 0.758 / 0.898 i2t / t2i,
without L3 0.764 / 0.889, without L4 0.758 / 0.895): unlike the paper's Table 6, no gain is measurable.

Choices where the paper is vague or inconsistent, and why:

* Image network. The paper fine-tunes an ImageNet ResNet34; no pretrained weights are available offline
  and our image input is already a 416-d descriptor, so the backbone is an MLP (``image_hidden``, FC–ReLU)
  over the descriptor, z-scored per dimension inside the network (so the scaling is part of the exported
  graph, as in UDDH). "The last layer replaced by (k + c) nodes, followed by a hash layer and a label
  layer" is read as one FC output split in two: a hash layer (k, tanh) and a label layer (c logits), both
  on the last hidden layer. ``image_net="cnn"`` instead takes flattened raw pixels (3 × s × s in [0, 1],
  ``image_size`` = s, centred and scaled as (x − 0.5)/0.25) through a small CNN (``cnn_channels``: blocks
  of 3 × 3 conv, ReLU, 2 × 2 max-pool, then a global average pool, no batch norm) before the same MLP and
  heads: a closer stand-in for ResNet34, meant for GPU runs on raw pixels (the registry feeds feature
  vectors, so it is reached by calling ``train_dmsfh`` directly). onnxruntime has no float64 Conv, so
  while exporting the convolution is traced as nine shifted MatMuls (same arithmetic, parity ~1e-15).
* Text network (§3.2): T → MS → 4096 → 512 → k + c. The multi-scale (MS) fusion block is SSAH's: for each
  of the five scales s (50, 30, 15, 10, 5) the bag of words is average-pooled over windows of s adjacent
  vocabulary entries (stride s, "valid", so a remainder shorter than s is not pooled), passed through a
  1 × 1 convolution (one weight and bias: the map has one channel) and a ReLU, and linearly resized back
  to the vocabulary length (torch's linear ``interpolate``, half-pixel centres; SSAH's TF1 resize maps
  corners asymmetrically, a sub-window shift); the input and the five maps are stacked as six channels
  and flattened into the first FC layer. Pooling and resizing are fixed matrices (MatMul in the exported
  graph: onnxruntime's AveragePool, Conv and Resize have no float64 kernels). The paper's pooling is
  printed as 50 × 50 … 5 × 5 but a BoW is one-dimensional, so the windows are 1 × s (as in SSAH's code).
  The 1 × 1 weights start at 1 and biases at 0: the pooled input is non-negative, so a negative initial
  weight would make a scale's ReLU dead from the start. The text input is divided by one global scale
  (its RMS over the training set), which keeps it sparse and non-negative, as in UDDH. Our vocabulary is
  alphabetical, so a window pools words that are neighbours in spelling — as arbitrary as the paper's
  own BoW order; the block is kept because the paper has it.
* S. The paper builds one binary S "1 if similar" for all pairs; similar = sharing at least one label,
  the usual DCMH reading. The minibatch NLL terms use it row by row (S of the batch against all n
  items); L4 uses the same S.
* Minibatches and memory (Algorithm 1, "Update F"). As in DCMH, whose code Algorithm 1 and the learning
  rates follow, F and G of all n training items are kept in memory: a minibatch of images is scored
  against all n texts of G (L1) and all n images of F (L2^v), with its own rows of F refreshed first,
  the other network fixed. The minibatch estimate of Eq. 13 is divided by (batch · n), i.e. Eq. 13 / n²
  up to sampling — DCMH's normalisation, for which the paper's SGD learning rate 10^−1.5 was set. The
  gradients are those of Eq. 14–17 (φ^vv_ij differentiated through F_i* only, as Eq. 14 writes it).
* α, β, γ. Eq. 13 weighs L3 by 1; ``alpha`` makes it a hyper-parameter too (``paper``: α = β = γ = 1).
  In the sum form L1 and L2 have n terms per item, L3 has c and L5 has k, so at weight 1 the label and
  quantisation terms barely move the networks (their per-item gradient is ~1/n of the pairwise one).
  The CPU preset multiplies all three by 100 (ratios among L3, L4, L5 and γ/β as in the paper): chosen
  on a held-out part of the *training* split (``DMSFHConfig`` docstring), never on the query set. The
  right multiplier grows with n (the pairwise sums do): on the 600-item synthetic test set 1 beats 10,
  30 and 100 (mAP 0.77 / 0.79 vs 0.52 / 0.53 at 100), so retune it for much smaller or larger sets.
* Eq. 13 vs Eq. 18–19. Eq. 13 puts γ on L4 and β on L5 (and Eq. 14 differentiates 2β(F − B)), but
  Eq. 18 swaps them and Eq. 19, B = sign((F + G)(2I + β/γ L⁻¹)), does not type-check (an n × k matrix
  times n × n on the right) and inverts the singular L. We follow Eq. 13: with F and G fixed and B
  relaxed to real values, the minimiser of β(‖B − F‖² + ‖B − G‖²) + γ tr(BᵀLB) solves
  (2I + (γ/β) L) B = F + G, and B is its sign. (The paper's setting γ = β = 1 makes both readings agree.)
  The relaxed minimiser never has a larger relaxed objective than the previous codes (they are feasible
  for the relaxed problem); its sign is not guaranteed to lower the binary objective. We keep the
  relaxation on purpose: for binary B, ‖b_i‖² = k, so tr(BᵀLB) = const − tr(BᵀSB), and with S ≥ 0 the
  exact binary minimiser at n ≫ k pulls every connected item to one code (γ tr(BᵀSB) has ~degree ≈ 1000
  terms per item on OpenClipart against 2β(F + G) ≤ 4).
* Solving Eq. 19 without any n × n matrix. S_ij depends only on the label vectors of i and j, so with the
  u distinct label vectors (u = 210 on OpenClipart, u ≤ n always) S = P S_u Pᵀ, P the (n, u) one-hot
  membership and S_u the u × u "share a label" matrix; D is constant within a group. Writing
  A = M − λ P S_u Pᵀ with M = 2I + λD diagonal and λ = γ/β, the solution X of A X = R = F + G satisfies,
  for Z = Pᵀ X, (C⁻¹ − λ S_u) Z = C⁻¹ Pᵀ M⁻¹ R with C = Pᵀ M⁻¹ P diagonal, and X = M⁻¹ (R + λ P S_u Z):
  exact, O(n k + u² k + u³). The u × u system is symmetric positive definite (its quadratic form is
  xᵀ A x for x = M⁻¹ P C⁻¹ z, and A is), so it is solved by Cholesky; above
  ``MAX_DENSE_GROUPS`` distinct label vectors it is solved by Jacobi-preconditioned conjugate gradients
  with S_u applied block by block, so memory stays O(block × u + n k) whatever the labels. The
  normalised Laplacian (next note) has the same structure with D → 1 and S_u → diag(d_g^{-½}) S_u
  diag(d_g^{-½}).
* Normalised Laplacian (``graph_laplacian``). With the paper's L = D − S the degrees are large (mean
  ≈ 980 on OpenClipart's training split, in general n × the label prior) and (2I + λL)⁻¹ is a strong
  smoother whose null vector, one constant code per connected component, wins every bit on which
  F + G is not balanced: on the synthetic test data (n = 600, degree ≈ 270) B became one code for all
  items after the first epoch (L4 = 0, no bit flipped afterwards). The default is therefore the
  symmetric normalised Laplacian I − D^{-½} S D^{-½} (eigenvalues in [0, 2], so the B step smooths F + G
  over the label graph by at most a factor 1 + λ); ``graph_laplacian="unnormalized"`` is the literal
  one, also in ``paper`` (it is the printed formula). On OpenClipart's held-out training items (64 bits,
  α = β = γ = 30, 20 epochs) the normalised one gave mAP 0.687 / 0.795 (i2t / t2i), the literal one
  0.644 / 0.715.
* Initial state (not given). F and G start as the initial networks' outputs on the training set (DCMH
  starts from random buffers) and B from the B step on them.
* Optimiser (§4.3): SGD, 500 epochs, batch 128, learning rate 10^−1.5 "gradually lowered" to 10^−6:
  geometric per epoch (``DMSFHConfig.learning_rate``). ``DMSFHConfig.paper`` sets exactly that. The
  default is a CPU preset (its docstring).
* History: one record per epoch, every term per training item (Eq. 13 / n): L1, L2 and L3 are the means
  of the epoch's minibatch terms (per item of the batch, summed over its n partners or c labels; L1 is
  seen by both networks' steps and averaged over them), L4 and L5 are exact over the training set after
  the B step, with the memory F and G. ``objective`` is L1 + L2 + αL3 + γL4 + βL5 of those; terms an
  ablation switches off are absent. Plus the learning rate, the number of B bits that flipped and
  whatever ``eval_fn`` returns, every ``eval_every`` epochs and after the last (the registry's
  validation mAP encodes 6,873 items per modality each time, a few seconds on a shared CPU core).
* Parity. The exported hash functions are ``TorchHashEncoder``s of the two networks without their
  label layers (float64 copies, traced to ONNX): input scaling, backbone, hash layer, tanh.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg, sparse
from torch import nn
from torch.nn import functional
from tqdm import tqdm

from index.codes import to_signs
from training.methods.base import TrainedHasher, check_paired, evaluation_fields
from training.methods.torch_encoder import frozen_hasher, paired_tensors, torch_threads

_CHUNK = 2048  # rows per full-training-set forward pass and per block of S_u products
MAX_DENSE_GROUPS = 4096  # distinct label vectors up to which the Eq. 19 system is factorised densely
PAPER_TEXT_SCALES = (50, 30, 15, 10, 5)  # §3.2: the MS block's average-pooling windows


@dataclass(frozen=True)
class DMSFHConfig:
    """Hyper-parameters. The defaults are a CPU preset that trains OpenClipart (n ≈ 5,900) in about five
    minutes on one shared core: the paper's Eq. 13, alternation, batch 128 and MS block, but Adam (lr 1e-3
    → 1e-4, geometric) for 20 epochs instead of SGD (10^−1.5 → 10^−6) for 500, narrower networks (text
    MS → 1024 → 256 instead of 4096 → 512), the normalised Laplacian, and α = β = γ = 100 instead of 1
    (the same ratios, but L3–L5 weighed up against the n-term pairwise sums; module notes).
    :meth:`paper` restores the paper's settings.

    Chosen on a held-out part of the training split (seed-123 permutation: 1,000 training items as
    queries against the other 4,873 as database, the model trained on those 4,873; 64 bits, seed 0;
    mAP image→text / text→image after 20 epochs): α = β = γ = 1: 0.595 / 0.637 (lr 1e-3 → 1e-4; with
    lr → 1e-5: 0.561 / 0.605; lr 3e-3 → 1e-4: 0.470 / 0.458); α = 30 alone: 0.601 / 0.650; α = β = γ
    = 30: 0.687 / 0.795 (the paper's unnormalised L: 0.644 / 0.715); 100: 0.716 / 0.864; 300:
    0.720 / 0.867; 1000: 0.694 / 0.798."""

    bits: int
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"  # "sgd" (the paper) or "adam"
    lr: float = 1e-3  # at the first epoch
    lr_end: float = 1e-4  # at the last epoch, geometric in between
    momentum: float = 0.0  # SGD only
    weight_decay: float = 0.0
    alpha: float = 100.0  # weight of L3 (Eq. 13: 1)
    beta: float = 100.0  # weight of L5, the quantisation loss (Eq. 13: β = 1)
    gamma: float = 100.0  # weight of L4, the graph regularisation (Eq. 13: γ = 1)
    label_loss: bool = True  # L3 and the label layers; False with graph_loss=False is DMSFH-P
    graph_loss: bool = True  # L4; False is DMSFH-S
    graph_laplacian: str = "normalized"  # L of L4: "normalized" I − D^-½ S D^-½, or the paper's "unnormalized" D − S
    image_net: str = "mlp"  # "mlp" over feature vectors, or "cnn" over flattened 3 × s × s pixels
    image_hidden: tuple[int, ...] = (1024, 512)  # the image MLP (after the CNN for image_net="cnn")
    text_hidden: tuple[int, ...] = (1024, 256)  # TxtNet after the MS block (paper: 4096, 512)
    text_scales: tuple[int, ...] = PAPER_TEXT_SCALES  # MS block pooling windows; () leaves the block out
    image_size: int = 64  # s, the side of the square pixel input of image_net="cnn"
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256)  # one conv block per entry (image_net="cnn")
    eval_every: int = 5  # call eval_fn every this many epochs (and after the last)
    device: str = "cpu"
    # torch intra-op threads while training (restored after); minibatches of 128 gain little from more
    # threads on a shared 2-core machine (see UDDHConfig). None keeps torch's setting.
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("image_hidden", "text_hidden", "text_scales", "cnn_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON configs
        if self.bits < 1:
            raise ValueError(f"bits must be positive, got {self.bits}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("epochs, batch_size and eval_every must be positive")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not (self.lr > 0 and self.lr_end > 0):
            raise ValueError(f"learning rates must be positive, got lr={self.lr}, lr_end={self.lr_end}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("momentum must be in [0, 1) and weight_decay non-negative")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a non-negative number, got {value}")
        if self.beta == 0 and self.graph_loss and self.gamma > 0:
            raise ValueError(
                "beta (the quantisation weight) must be positive when the graph loss is on: Eq. 19 divides by it"
            )
        for name in ("label_loss", "graph_loss"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.graph_laplacian not in ("normalized", "unnormalized"):
            raise ValueError(f"graph_laplacian must be 'normalized' or 'unnormalized', got {self.graph_laplacian!r}")
        if self.image_net not in ("mlp", "cnn"):
            raise ValueError(f"image_net must be 'mlp' or 'cnn', got {self.image_net!r}")
        if not self.image_hidden or not self.text_hidden or min(self.image_hidden + self.text_hidden) < 1:
            raise ValueError("image_hidden and text_hidden need at least one positive layer size")
        if any(s < 1 for s in self.text_scales) or len(set(self.text_scales)) != len(self.text_scales):
            raise ValueError(f"text_scales must be distinct positive window sizes, got {self.text_scales}")
        if self.image_net == "cnn" and (
            not self.cnn_channels or min(self.cnn_channels) < 1 or self.image_size < 2 ** len(self.cnn_channels)
        ):
            raise ValueError("image_net='cnn' needs positive cnn_channels and image_size ≥ 2^(number of blocks)")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be positive or None, got {self.torch_threads}")

    @classmethod
    def paper(cls, bits: int, **overrides) -> DMSFHConfig:
        """§3.2, §4.3 and Algorithm 1: SGD for 500 epochs, batch 128, learning rate 10^−1.5 lowered to
        10^−6, γ = β = 1 (α = 1 as Eq. 13 has it), TxtNet MS → 4096 → 512 with pooling windows 50, 30, 15,
        10, 5, and L = D − S as printed. The image backbone stays the MLP (the paper's is an ImageNet
        ResNet34)."""
        settings = {
            "epochs": 500,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 10**-1.5,
            "lr_end": 1e-6,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "alpha": 1.0,
            "beta": 1.0,
            "gamma": 1.0,
            "graph_laplacian": "unnormalized",
            "text_hidden": (4096, 512),
            "text_scales": PAPER_TEXT_SCALES,
        }
        return cls(bits, **(settings | overrides))

    def learning_rate(self, epoch: int) -> float:
        """The rate of 0-based ``epoch``: lr at the first, lr_end at the last, geometric in between."""
        if self.epochs == 1:
            return self.lr
        return self.lr * (self.lr_end / self.lr) ** (epoch / (self.epochs - 1))


# -- the loss terms of Eq. 13 (sums, as printed) -----------------------------------------------------------


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S (len a, len b): 1.0 where the two items share at least one label, else 0.0."""
    return ((labels_a.to(torch.float32) @ labels_b.to(torch.float32).T) > 0).to(labels_a.dtype)


def pairwise_nll(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """−Σ_ij (S_ij φ_ij − log(1 + e^φ_ij)) with φ_ij = ½ a_i·b_j: the negative log likelihood of Eq. 3–4."""
    phi = 0.5 * a @ b.T
    return (functional.softplus(phi) - s * phi).sum()


def inter_modal_loss(f: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L1 (Eq. 3): image codes F (rows i) against text codes G (rows j) under S^vt."""
    return pairwise_nll(f, g, s)


def intra_modal_loss(f: torch.Tensor, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L2 = L2^v + L2^t (Eq. 5–7): images against images and texts against texts, both under S."""
    return pairwise_nll(f, f, s) + pairwise_nll(g, g, s)


def label_loss(image_logits: torch.Tensor, text_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L3 (Eq. 8–10): Σ_ij (−L_ij L̂_ij + log(1 + e^L̂_ij)) of both networks' label layers."""
    return sum((functional.softplus(x) - labels * x).sum() for x in (image_logits, text_logits))


def quantization_loss(b: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """L5 (Eq. 12): ‖B − F‖² + ‖B − G‖²."""
    return ((b - f) ** 2).sum() + ((b - g) ** 2).sum()


def graph_loss(b: torch.Tensor | np.ndarray, graph: LabelGraph) -> float:
    """L4 (Eq. 11): tr(Bᵀ L B) = ½ Σ_ij S_ij ‖b_i − b_j‖² (the paper's L = D − S; with the normalised
    Laplacian ½ Σ_ij S_ij ‖b_i/√d_i − b_j/√d_j‖²), in O(n k + u² k), never n × n."""
    b = np.asarray(b.detach().cpu() if isinstance(b, torch.Tensor) else b, dtype=np.float64)
    return float((b * graph.laplacian_product(b)).sum())


def objective(terms: dict[str, float | torch.Tensor], config: DMSFHConfig) -> float | torch.Tensor:
    """Eq. 13: L1 + L2 + α L3 + γ L4 + β L5 over the terms present (an ablation leaves a term out)."""
    weights = {"inter_modal": 1.0, "intra_modal": 1.0, "label": config.alpha, "graph": config.gamma}
    weights["quantization"] = config.beta
    return sum(weights[name] * value for name, value in terms.items())


# -- the label graph and the B step (Eq. 19) ----------------------------------------------------------------


class LabelGraph:
    """The label graph of L4: S_ij = 1 iff items i and j share a label, and its Laplacian.

    ``normalized=False`` is the paper's L = D − S; ``normalized=True`` is L = I − D^{-1/2} S D^{-1/2} (an
    item without labels is isolated: its row of L is zero). Either way L = Δ − P W_u Pᵀ with Δ diagonal
    and constant within a group of items sharing one label vector, P the (n, u) one-hot membership of the
    u distinct label vectors and W_u the u × u group affinity (S_u, or S_u scaled by d_g^{-1/2} d_h^{-1/2}).
    Products with L and the B-step solve cost O(n k + u² k) (+ u³ once per solve); nothing is n × n.
    """

    def __init__(self, labels: np.ndarray, normalized: bool = True, max_dense_groups: int = MAX_DENSE_GROUPS) -> None:
        y = np.asarray(labels, dtype=np.float64)
        self.normalized = normalized
        self.unique, inverse, counts = np.unique(y, axis=0, return_inverse=True, return_counts=True)
        self.group = np.asarray(inverse).ravel()
        self.counts = counts.astype(np.float64)
        n, u = len(y), len(self.unique)
        self.membership = sparse.csr_matrix((np.ones(n), (np.arange(n), self.group)), shape=(n, u))  # P
        self._dense_s_u = self._s_block(slice(0, u)) if u <= max_dense_groups else None
        self._scale = np.ones(u)  # d_g^{-1/2} when normalised
        self.group_degree = self._s_u_product(self.counts[:, None])[:, 0]  # d_g = (S_u · counts)_g
        if normalized:
            self._scale = np.divide(1.0, np.sqrt(self.group_degree), out=np.zeros(u), where=self.group_degree > 0)
            self.group_diagonal = (self.group_degree > 0).astype(np.float64)
        else:
            self.group_diagonal = self.group_degree
        self.diagonal = self.group_diagonal[self.group]  # Δ: d_i, or 1 (0 for an isolated item)

    @property
    def n_groups(self) -> int:
        return len(self.unique)

    def _s_block(self, rows: slice) -> np.ndarray:
        return ((self.unique[rows] @ self.unique.T) > 0).astype(np.float64)

    def _s_u_product(self, z: np.ndarray) -> np.ndarray:
        if self._dense_s_u is not None:
            return self._dense_s_u @ z
        out = np.empty((self.n_groups, z.shape[1]))
        for start in range(0, self.n_groups, _CHUNK):
            rows = slice(start, start + _CHUNK)
            out[rows] = self._s_block(rows) @ z
        return out

    def group_affinity_product(self, z: np.ndarray) -> np.ndarray:
        """W_u z for z (u, r), dense or block by block."""
        return self._scale[:, None] * self._s_u_product(self._scale[:, None] * z)

    def affinity_product(self, m: np.ndarray) -> np.ndarray:
        """W m for m (n, r): S m, or D^{-1/2} S D^{-1/2} m when normalised."""
        return self.membership @ self.group_affinity_product(self.membership.T @ m)

    def laplacian_product(self, m: np.ndarray) -> np.ndarray:
        """L m for m (n, r)."""
        return self.diagonal[:, None] * m - self.affinity_product(m)

    def solve(self, r: np.ndarray, weight: float, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
        """X = (2I + weight · L)⁻¹ R for R (n, k): the relaxed B step (module notes, Eq. 19).

        With M = 2I + weight·Δ, C = Pᵀ M⁻¹ P (both diagonal) and Z = Pᵀ X: (C⁻¹ − weight W_u) Z =
        C⁻¹ Pᵀ M⁻¹ R, then X = M⁻¹ (R + weight P W_u Z)."""
        r = np.asarray(r, dtype=np.float64)
        group_m = 2.0 + weight * self.group_diagonal
        m = group_m[self.group][:, None]
        if weight == 0:
            return r / m
        inverse_c = group_m / self.counts
        rhs = (self.membership.T @ (r / m)) * inverse_c[:, None]
        if self._dense_s_u is not None:
            system = np.diag(inverse_c) - weight * (self._scale[:, None] * self._dense_s_u * self._scale[None, :])
            z = linalg.cho_solve(linalg.cho_factor(system), rhs)
        else:
            z = self._conjugate_gradients(inverse_c, weight, rhs, tol, max_iter)
        return (r + weight * (self.membership @ self.group_affinity_product(z))) / m

    def _conjugate_gradients(
        self, inverse_c: np.ndarray, weight: float, rhs: np.ndarray, tol: float, max_iter: int
    ) -> np.ndarray:
        """Solve (diag(inverse_c) − weight W_u) Z = rhs (SPD), all columns at once, Jacobi-preconditioned."""
        own = (self.unique.sum(1) > 0) * self._scale**2  # the diagonal of W_u
        precondition = (1.0 / (inverse_c - weight * own))[:, None]

        def apply(z: np.ndarray) -> np.ndarray:
            return inverse_c[:, None] * z - weight * self.group_affinity_product(z)

        z = rhs * precondition
        residual = rhs - apply(z)
        p = residual * precondition
        rz = (residual * p).sum(0)
        scale = np.linalg.norm(rhs, axis=0)
        for _ in range(max_iter):
            if (np.linalg.norm(residual, axis=0) <= tol * scale).all():
                break
            ap = apply(p)
            step = np.divide(rz, (p * ap).sum(0), out=np.zeros_like(rz), where=rz != 0)
            z += step * p
            residual -= step * ap
            preconditioned = residual * precondition
            rz_new = (residual * preconditioned).sum(0)
            p = preconditioned + np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz != 0) * p
            rz = rz_new
        return z


def relaxed_code_objective(b: np.ndarray, f: np.ndarray, g: np.ndarray, graph: LabelGraph, weight: float) -> float:
    """Eq. 18 divided by β, B allowed real: ‖B − F‖² + ‖B − G‖² + (γ/β) tr(BᵀLB)."""
    b, f, g = (np.asarray(x, dtype=np.float64) for x in (b, f, g))
    fit = float(((b - f) ** 2).sum() + ((b - g) ** 2).sum())
    return fit + (weight * graph_loss(b, graph) if weight else 0.0)


def relaxed_codes(f: np.ndarray, g: np.ndarray, graph: LabelGraph | None, weight: float) -> np.ndarray:
    """The real minimiser of Eq. 18 over B: (2I + (γ/β) L)⁻¹ (F + G); (F + G)/2 without the graph."""
    r = np.asarray(f, dtype=np.float64) + np.asarray(g, dtype=np.float64)
    if graph is None or weight == 0:
        return r / 2
    return graph.solve(r, weight)


def update_codes(f: np.ndarray, g: np.ndarray, graph: LabelGraph | None, weight: float) -> np.ndarray:
    """The B step (Eq. 19 as derived in the module notes): sign((2I + (γ/β) L)⁻¹ (F + G)), int8 ±1."""
    return to_signs(relaxed_codes(f, g, graph, weight))


# -- networks -------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers


def pooling_matrix(dim: int, scale: int) -> torch.Tensor:
    """(dim, dim // scale): x @ it averages windows of ``scale`` adjacent entries, stride ``scale``, "valid"."""
    windows = dim // scale
    matrix = torch.zeros(dim, windows)
    for w in range(windows):
        matrix[w * scale : (w + 1) * scale, w] = 1.0 / scale
    return matrix


def resize_matrix(length: int, dim: int) -> torch.Tensor:
    """(length, dim): z @ it resizes a length-``length`` signal to ``dim`` by linear interpolation with
    half-pixel centres (``torch.nn.functional.interpolate(mode="linear", align_corners=False)``)."""
    matrix = torch.zeros(length, dim, dtype=torch.float64)
    for o in range(dim):
        source = max((o + 0.5) * length / dim - 0.5, 0.0)
        low = min(math.floor(source), length - 1)
        high = min(low + 1, length - 1)
        frac = source - low
        matrix[low, o] += 1.0 - frac
        matrix[high, o] += frac
    return matrix.to(torch.float32)


class MultiScaleFusion(nn.Module):
    """SSAH's MS block (n, d) → (n, 1 + scales, d): per scale s, average-pool windows of s entries, a 1 × 1
    convolution (the map has one channel: one weight and one bias), ReLU, linear resize back to d; the
    input is the first channel. Pooling and resizing are fixed matrices (buffers), so the exported graph
    is MatMuls, which onnxruntime runs in float64 (its AveragePool, Conv and Resize kernels are float32)."""

    def __init__(self, dim: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.dim, self.scales = dim, tuple(scales)
        for i, scale in enumerate(self.scales):
            self.register_buffer(f"pool{i}", pooling_matrix(dim, scale))
            self.register_buffer(f"resize{i}", resize_matrix(dim // scale, dim))
        # the 1 × 1 convolutions; weights start at 1 so no scale's ReLU is dead at the start (module notes)
        self.weight = nn.Parameter(torch.ones(len(self.scales)))
        self.bias = nn.Parameter(torch.zeros(len(self.scales)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = [x]
        for i in range(len(self.scales)):
            pooled = x @ getattr(self, f"pool{i}")
            maps.append(functional.relu(self.weight[i] * pooled + self.bias[i]) @ getattr(self, f"resize{i}"))
        return torch.stack(maps, dim=1)


class _Conv3x3(nn.Module):
    """A 3 × 3 convolution, padding 1. Exported as nine shifted MatMuls (onnxruntime has no float64 Conv);
    elsewhere it runs as an ordinary convolution."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        conv = nn.Conv2d(fan_in, fan_out, 3, padding=1)  # for its initialisation
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return functional.conv2d(x, self.weight, self.bias, padding=1)
        height, width = x.shape[2], x.shape[3]
        padded = functional.pad(x, (1, 1, 1, 1))
        out = self.bias[None, :, None, None]
        for i, j in itertools.product(range(3), range(3)):
            window = padded[:, :, i : i + height, j : j + width].permute(0, 2, 3, 1)  # (n, h, w, c_in)
            out = out + (window @ self.weight[:, :, i, j].T).permute(0, 3, 1, 2)
        return out


class _PixelCNN(nn.Module):
    """Flattened 3 × s × s pixels → conv blocks (3 × 3 conv, ReLU, 2 × 2 max-pool) → global average pool."""

    def __init__(self, size: int, channels: Sequence[int]) -> None:
        super().__init__()
        self.size = size
        layers: list[nn.Module] = []
        for fan_in, fan_out in itertools.pairwise((3, *channels)):
            layers += [_Conv3x3(fan_in, fan_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.blocks = nn.Sequential(*layers)
        self.out_dim = channels[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x.reshape(-1, 3, self.size, self.size)).mean(dim=(2, 3))


class DMSFHNet(nn.Module):
    """One modality's network: input scaling, backbone, hash layer (k, tanh) and label layer (c, training only).

    ``forward`` is the hash function: float32 features → tanh-relaxed codes in the module's dtype.
    """

    def __init__(
        self,
        shift: np.ndarray,
        scale: np.ndarray,
        backbone: Sequence[nn.Module],
        backbone_dim: int,
        bits: int,
        n_labels: int | None,
    ) -> None:
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale, dtype=torch.float32))
        self.backbone = nn.Sequential(*backbone)
        self.hash = nn.Linear(backbone_dim, bits)
        self.label = nn.Linear(backbone_dim, n_labels) if n_labels else None

    @property
    def input_dim(self) -> int:
        return self.shift.shape[0]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x.to(self.shift.dtype) - self.shift) * self.inv_scale)

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tanh-relaxed code, label logits or None)."""
        z = self.features(x)
        return torch.tanh(self.hash(z)), (self.label(z) if self.label is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.hash(self.features(x)))


def build_networks(image: np.ndarray, text: np.ndarray, n_labels: int, config: DMSFHConfig) -> dict[str, DMSFHNet]:
    """The image network (MLP or CNN) and TxtNet, with input scaling fitted on the training features."""
    heads = n_labels if config.label_loss else None
    if config.image_net == "cnn":  # pixels in [0, 1]: centre and scale globally, keep the layout
        cnn = _PixelCNN(config.image_size, config.cnn_channels)
        image_layers = [cnn, *_mlp((cnn.out_dim, *config.image_hidden))]
        image_scaling = (np.full(image.shape[1], 0.5), np.full(image.shape[1], 0.25))
    else:
        image_layers = _mlp((image.shape[1], *config.image_hidden))
        std = image.std(axis=0)
        image_scaling = (image.mean(axis=0), np.where(std > 1e-8 * std.max(), std, 1.0))
    text_dim = text.shape[1]
    rms = float(np.sqrt(np.mean(text * text)))
    fusion = [MultiScaleFusion(text_dim, config.text_scales), nn.Flatten()] if config.text_scales else []
    text_layers = [*fusion, *_mlp(((1 + len(config.text_scales)) * text_dim, *config.text_hidden))]
    return {
        "image": DMSFHNet(*image_scaling, image_layers, config.image_hidden[-1], config.bits, heads),
        "text": DMSFHNet(
            np.zeros(text_dim), np.full(text_dim, rms), text_layers, config.text_hidden[-1], config.bits, heads
        ),
    }


# -- training -------------------------------------------------------------------------------------------


def _check_inputs(
    image: np.ndarray, text: np.ndarray, labels: np.ndarray, config: DMSFHConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, text, labels = check_paired(image, text, labels)
    if config.text_scales and text.shape[1] < max(config.text_scales):
        raise ValueError(
            f"text features have {text.shape[1]} dimensions, fewer than the largest multi-scale pooling "
            f"window ({max(config.text_scales)}); pass smaller text_scales"
        )
    if config.image_net == "cnn" and image.shape[1] != 3 * config.image_size**2:
        raise ValueError(
            f"image_net='cnn' takes flattened 3 × {config.image_size} × {config.image_size} pixels "
            f"({3 * config.image_size**2} values per row), got {image.shape[1]}"
        )
    return image, text, labels


def _full_pass(net: DMSFHNet, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    with torch.no_grad():
        out = torch.cat([net(x[s : s + _CHUNK]) for s in range(0, len(x), _CHUNK)])
    net.train()
    return out


def _make_optimizer(net: nn.Module, config: DMSFHConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _network_step(
    modality: str,
    net: DMSFHNet,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    labels: torch.Tensor,
    memory: dict[str, torch.Tensor],
    codes: torch.Tensor,
    config: DMSFHConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One network's epoch of Algorithm 1 (the other network fixed): minibatch SGD/Adam on Eq. 13 / n².

    Returns the epoch's per-item means of the network's terms (module notes, History)."""
    n = len(x)
    own, other = memory[modality], memory["text" if modality == "image" else "image"]
    sums = {"inter_modal": 0.0, "intra_modal": 0.0, "label": 0.0}
    order = torch.from_numpy(rng.permutation(n)).to(x.device)
    for start in range(0, n, config.batch_size):
        batch = order[start : start + config.batch_size]
        code, logits = net.parts(x[batch])
        s = label_similarity(labels[batch], labels)
        with torch.no_grad():
            own[batch] = code.detach()  # "Update F" (G): the memory holds this batch's new rows
        terms = {"inter_modal": pairwise_nll(code, other, s), "intra_modal": pairwise_nll(code, own, s)}
        if logits is not None:
            terms["label"] = (functional.softplus(logits) - labels[batch] * logits).sum()
        terms["quantization"] = ((codes[batch] - code) ** 2).sum()
        loss = objective(terms, config) / (len(batch) * n)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name in sums:
            if name in terms:
                sums[name] += float(terms[name].detach())
    return {name: value / n for name, value in sums.items() if name != "label" or config.label_loss}


def _epoch_record(
    epoch: int,
    lr: float,
    steps: dict[str, dict[str, float]],
    memory: dict[str, torch.Tensor],
    codes: np.ndarray,
    flips: int,
    graph: LabelGraph | None,
    config: DMSFHConfig,
) -> dict:
    n = len(codes)
    f, g = (memory[m].detach().cpu().double().numpy() for m in ("image", "text"))
    terms = {
        "inter_modal": (steps["image"]["inter_modal"] + steps["text"]["inter_modal"]) / 2,
        "intra_modal": steps["image"]["intra_modal"] + steps["text"]["intra_modal"],
    }
    if config.label_loss:
        terms["label"] = steps["image"]["label"] + steps["text"]["label"]
    if graph is not None:
        terms["graph"] = graph_loss(codes, graph) / n
    terms["quantization"] = float(((codes - f) ** 2).sum() + ((codes - g) ** 2).sum()) / n
    return (
        {"epoch": epoch, "iteration": epoch, "lr": lr}
        | terms
        | {
            "objective": float(objective(terms, config)),
            "code_bit_flips": flips,
        }
    )


def train_dmsfh(
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray,
    config: DMSFHConfig,
    seed: int = 0,
    progress: bool = False,
    eval_fn: Callable[[TrainedHasher], dict[str, float] | float] | None = None,
) -> TrainedHasher:
    """Train on paired rows of ``image`` and ``text`` features with their multi-hot ``labels``.

    Input is checked up front. ``eval_fn`` (e.g. validation mAP both ways) is called on the current hasher
    every ``config.eval_every`` epochs and after the last; its values (a dict, or a float stored as
    ``eval``) land in that epoch's ``history`` record. ``progress`` shows a tqdm bar with the objective
    and those values.
    """
    image, text, labels = _check_inputs(image, text, labels, config)
    rng = np.random.default_rng(seed)
    device = torch.device(config.device)
    xs, y = paired_tensors(image, text, labels, device)
    graph = LabelGraph(labels, normalized=config.graph_laplacian == "normalized") if config.graph_loss else None
    weight = config.gamma / config.beta if config.graph_loss and config.gamma > 0 else 0.0
    history: list[dict] = []
    with torch.random.fork_rng(devices=[]), torch_threads(config.torch_threads):
        torch.manual_seed(seed)
        nets = build_networks(image, text, labels.shape[1], config)
        for net in nets.values():
            net.to(device).train()
        optimizers = {m: _make_optimizer(net, config) for m, net in nets.items()}
        memory = {m: _full_pass(net, xs[m]) for m, net in nets.items()}
        codes = update_codes(*(memory[m].cpu().double().numpy() for m in ("image", "text")), graph, weight)
        bar = tqdm(range(config.epochs), desc="DMSFH", disable=not progress)
        for epoch in bar:
            lr = config.learning_rate(epoch)
            target = torch.as_tensor(codes, dtype=torch.float32, device=device)
            steps = {}
            for m in ("image", "text"):  # Algorithm 1: image network, then text network, then B
                for group in optimizers[m].param_groups:
                    group["lr"] = lr
                steps[m] = _network_step(m, nets[m], optimizers[m], xs[m], y, memory, target, config, rng)
            new_codes = update_codes(*(memory[m].cpu().double().numpy() for m in ("image", "text")), graph, weight)
            flips = int((new_codes != codes).sum())
            codes = new_codes
            record = _epoch_record(epoch + 1, lr, steps, memory, codes.astype(np.float64), flips, graph, config)
            if eval_fn is not None and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
                record |= evaluation_fields(eval_fn(_hasher(nets, config, seed, [*history, record])))
            history.append(record)
            bar.set_postfix(
                {k: f"{v:.4g}" for k, v in record.items() if k == "objective" or k.startswith(("val", "eval"))}
            )
    return _hasher(nets, config, seed, history)


def _hasher(nets: dict[str, DMSFHNet], config: DMSFHConfig, seed: int, history: list[dict]) -> TrainedHasher:
    """The hasher as it stands: the networks without their label layers, frozen (float64, CPU)."""
    return frozen_hasher("dmsfh", nets, config, seed, history, drop=("label",))
