"""DMSFH — Deep Multi-Semantic Fusion-based cross-modal Hashing (Zhu, Cai, Zou, Zhu; Mathematics 2022).

An image network and a text network (with SSAH's multi-scale fusion block) map each item to k-bit
tanh-relaxed codes F, G and to label logits. With the label similarity S (share a label) and the unified
code B, the objective (Eq. 13) is L1 + L2 + α L3 + γ L4 + β L5: inter- and intra-modal pairwise NLL,
label cross-entropy, graph regularisation tr(BᵀLB) and quantisation. Algorithm 1 alternates per epoch:
the image network, the text network, then B in closed form (Eq. 19, solved without any n × n matrix).
Each term is a function here (``inter_modal_loss`` … ``quantization_loss``), and the training step calls
exactly those; ``objective`` weighs them.

Ablations, the choices where the paper is vague or inconsistent (networks, S, deep.minibatches, weights,
Eq. 18–19, the normalised Laplacian, optimiser, history) and the tuning log: ``docs/methods/dmsfh.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import linalg, sparse
from torch import nn
from torch.nn import functional

from index.codes import to_signs
from training.methods import deep
from training.methods.base import TextViews, TrainedHasher, check_paired, check_views
from training.methods.deep import Matrix, Monitor

_CHUNK = 2048  # rows per block of S_u products
Array = torch.Tensor | np.ndarray  # the quantisation loss takes either
MAX_DENSE_GROUPS = 4096  # distinct label vectors up to which the Eq. 19 system is factorised densely
PAPER_TEXT_SCALES = (50, 30, 15, 10, 5)  # §3.2: the MS block's average-pooling windows


@dataclass(frozen=True)
class DMSFHConfig(deep.GeometricSchedule):
    """Hyper-parameters. The defaults are a CPU preset that trains OpenClipart (n ≈ 5,900) in about five
    minutes on one shared core: the paper's Eq. 13, alternation, batch 128 and MS block, but Adam (lr 1e-3
    → 1e-4, geometric) for 20 epochs instead of SGD (10^−1.5 → 10^−6) for 500, narrower networks (text
    MS → 1024 → 256 instead of 4096 → 512), the normalised Laplacian, and α = β = γ = 100 instead of 1
    (the same ratios, but L3–L5 weighed up against the n-term pairwise sums; docs/methods/dmsfh.md).
    :meth:`paper` restores the paper's settings.
    The tuning log behind the preset: ``docs/methods/dmsfh.md``."""

    bits: int
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"  # "sgd" (the paper) or "adam"
    lr: float = 1e-3  # at the first epoch
    final_lr: float = 1e-4  # at the last epoch, geometric in between
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
    torch_threads: int | None = 1  # intra-op threads while training (restored after); None keeps torch's
    views_per_item: int = 1  # text views of an item the text step visits per epoch besides its text (if given)

    def __post_init__(self) -> None:
        for name in ("image_hidden", "text_hidden", "text_scales", "cnn_channels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from JSON configs
        if self.bits < 1:
            raise ValueError(f"bits must be positive, got {self.bits}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("epochs, batch_size and eval_every must be positive")
        if self.views_per_item < 0:
            raise ValueError(f"views_per_item must be non-negative, got {self.views_per_item}")
        self.check_schedule()
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
        deep.check_torch_threads(self.torch_threads)

    @classmethod
    def paper(cls, bits: int, **overrides) -> DMSFHConfig:
        """§3.2, §4.3 and Algorithm 1: SGD for 500 epochs, batch 128, learning rate 10^−1.5 lowered to
        10^−6, γ = β = 1 (α = 1 as Eq. 13 has it), TxtNet MS → 4096 → 512 with pooling windows 50, 30, 15,
        10, 5, and L = D − S as printed. The image backbone stays the MLP (the paper's is an ImageNet
        ResNet34)."""
        settings = deep.PAPER_SGD | {
            "epochs": 500,
            "alpha": 1.0,
            "beta": 1.0,
            "gamma": 1.0,
            "graph_laplacian": "unnormalized",
            "text_hidden": (4096, 512),
            "text_scales": PAPER_TEXT_SCALES,
            "views_per_item": 0,
        }
        return cls(bits, **(settings | overrides))


# -- the loss terms of Eq. 13 (sums, as printed) -----------------------------------------------------------


def label_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """S (len a, len b): 1.0 where the two items share at least one label, else 0.0."""
    return ((labels_a.to(torch.float32) @ labels_b.to(torch.float32).T) > 0).to(labels_a.dtype)


def pairwise_nll(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """−Σ_ij (S_ij φ_ij − log(1 + e^φ_ij)) with φ_ij = ½ a_i·b_j: the negative log likelihood of Eq. 3–4."""
    phi = 0.5 * a @ b.T
    return (functional.softplus(phi) - s * phi).sum()


def inter_modal_loss(codes: torch.Tensor, other: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L1 (Eq. 3): one modality's codes (rows i, e.g. F) against the other modality's (rows j, G) under S."""
    return pairwise_nll(codes, other, s)


def intra_modal_loss(codes: torch.Tensor, same: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L2^v or L2^t (Eq. 5–7): one modality's codes (rows i) against the same modality's (rows j) under
    S; L2 = L2^v + L2^t, each network's step sees its own."""
    return pairwise_nll(codes, same, s)


def label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One network's share of L3 (Eq. 8–10): Σ_ij (−L_ij L̂_ij + log(1 + e^L̂_ij)); L3 sums both networks'."""
    return (functional.softplus(logits) - labels * logits).sum()


def quantization_loss(b: Array, *codes: Array) -> Array:
    """L5 (Eq. 12) over the given relaxed codes: ‖B − F‖² + ‖B − G‖² with both, one network's share with one."""
    return sum(((b - x) ** 2).sum() for x in codes)


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
        """X = (2I + weight · L)⁻¹ R for R (n, k): the relaxed B step (docs/methods/dmsfh.md, Eq. 19).

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
    """The B step (Eq. 19 as derived in docs/methods/dmsfh.md): sign((2I + (γ/β) L)⁻¹ (F + G)), int8 ±1."""
    return to_signs(relaxed_codes(f, g, graph, weight))


# -- networks -------------------------------------------------------------------------------------------


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
        # the 1 × 1 convolutions; weights start at 1 so no scale's ReLU is dead at the start (docs/methods/dmsfh.md)
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


class DMSFHNet(deep.ScaledInputNet):
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
        super().__init__(shift, scale)
        self.backbone = nn.Sequential(*backbone)
        self.hash = nn.Linear(backbone_dim, bits)
        self.label = nn.Linear(backbone_dim, n_labels) if n_labels else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.scaled(x))

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
        image_layers = [cnn, *deep.mlp((cnn.out_dim, *config.image_hidden))]
        image_scaling = (np.full(image.shape[1], 0.5), np.full(image.shape[1], 0.25))
    else:
        image_layers = deep.mlp((image.shape[1], *config.image_hidden))
        image_scaling = deep.input_scaling(image, per_dimension=True)
    text_dim = text.shape[1]
    fusion = [MultiScaleFusion(text_dim, config.text_scales), nn.Flatten()] if config.text_scales else []
    text_layers = [*fusion, *deep.mlp(((1 + len(config.text_scales)) * text_dim, *config.text_hidden))]
    text_scaling = deep.input_scaling(text, per_dimension=False)
    return {
        "image": DMSFHNet(*image_scaling, image_layers, config.image_hidden[-1], config.bits, heads),
        "text": DMSFHNet(*text_scaling, text_layers, config.text_hidden[-1], config.bits, heads),
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


@dataclass(frozen=True)
class EpochRows:
    """The rows one network's step visits: their inputs and the training item each stands for (itself
    for rows [0, n), the described item for a text view)."""

    x: torch.Tensor
    item: torch.Tensor

    @classmethod
    def own(cls, x: torch.Tensor) -> EpochRows:
        return cls(x, torch.arange(len(x), device=x.device))


def sample_views(rng: np.random.Generator, item: np.ndarray, per_item: int) -> np.ndarray:
    """Indices of up to ``per_item`` views of each item, drawn uniformly without replacement, sorted."""
    order = rng.permutation(len(item))
    grouped = order[np.argsort(item[order], kind="stable")]
    sorted_items = item[grouped]
    rank = np.arange(len(grouped)) - np.searchsorted(sorted_items, sorted_items, side="left")
    return np.sort(grouped[rank < per_item])


def _text_rows(x: torch.Tensor, views: TextViews | None, per_item: int, rng: np.random.Generator) -> EpochRows:
    """The text step's rows of one epoch: every item's text, then ``per_item`` random views of each."""
    if views is None or per_item == 0:
        return EpochRows.own(x)
    chosen = sample_views(rng, views.item, per_item)
    extra = torch.as_tensor(views.features[chosen], dtype=torch.float32, device=x.device)  # as x: float32
    item = torch.as_tensor(views.item[chosen], dtype=torch.int64, device=x.device)
    return EpochRows(torch.cat([x, extra]), torch.cat([torch.arange(len(x), device=x.device), item]))


def _full_pass(net: DMSFHNet, x: torch.Tensor) -> torch.Tensor:
    """The relaxed codes of every training row: the memory F (or G) of Algorithm 1."""
    return deep.full_pass([net], len(x), lambda rows: {"codes": net(x[rows])})["codes"]


def _network_step(
    modality: str,
    net: DMSFHNet,
    optimizer: torch.optim.Optimizer,
    rows: EpochRows,
    labels: torch.Tensor,
    memory: dict[str, torch.Tensor],
    codes: torch.Tensor,
    config: DMSFHConfig,
    rng: np.random.Generator,
) -> dict[str, float]:
    """One network's epoch of Algorithm 1 (the other network fixed): minibatch SGD/Adam on Eq. 13 / n².

    A text view's row is trained as its item's (same S row, labels and target code) but only an item's
    own row updates the memory. Returns the epoch's per-row means of the network's terms
    (docs/methods/dmsfh.md, History)."""
    n = len(labels)
    own, other = memory[modality], memory["text" if modality == "image" else "image"]
    sums = {"inter_modal": 0.0, "intra_modal": 0.0, "label": 0.0}
    for batch in deep.minibatches(rng, len(rows.x), config.batch_size, rows.x.device):
        code, logits = net.parts(rows.x[batch])
        items = rows.item[batch]
        s = label_similarity(labels[items], labels)
        with torch.no_grad():
            mine = batch < n  # rows [0, n) are the items' own inputs
            own[batch[mine]] = code.detach()[mine]  # "Update F" (G): the memory holds this batch's new rows
        terms = {"inter_modal": inter_modal_loss(code, other, s), "intra_modal": intra_modal_loss(code, own, s)}
        if logits is not None:
            terms["label"] = label_loss(logits, labels[items])
        terms["quantization"] = quantization_loss(codes[items], code)
        deep.descend(optimizer, objective(terms, config) / (len(batch) * n))
        for name in sums:
            if name in terms:
                sums[name] += float(terms[name].detach())
    return {name: value / len(rows.x) for name, value in sums.items() if name != "label" or config.label_loss}


def _epoch_record(
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
    terms["quantization"] = float(quantization_loss(codes, f, g)) / n
    return terms | {"objective": float(objective(terms, config)), "code_bit_flips": flips}


def train_dmsfh(
    image: Matrix,
    text: Matrix,
    labels: Matrix,
    config: DMSFHConfig,
    seed: int = 0,
    monitor: Monitor | None = None,
    text_views: TextViews | None = None,
) -> TrainedHasher:
    """Train on paired rows of ``image`` and ``text`` features with their multi-hot ``labels``; the text
    network also learns from ``config.views_per_item`` of each item's ``text_views`` per epoch.

    Input is checked up front. The ``monitor``'s ``eval_fn`` runs every ``config.eval_every`` epochs and
    after the last.
    """
    image, text, labels = _check_inputs(image, text, labels, config)
    views = check_views(text_views, text)
    rng = np.random.default_rng(seed)
    device = torch.device(config.device)
    xs, y = deep.paired_tensors(image, text, labels, device)
    graph = LabelGraph(labels, normalized=config.graph_laplacian == "normalized") if config.graph_loss else None
    weight = config.gamma / config.beta if config.graph_loss and config.gamma > 0 else 0.0
    with deep.seeded_training(seed, config.torch_threads):
        nets = build_networks(image, text, labels.shape[1], config)
        for net in nets.values():
            net.to(device).train()
        optimizers = {m: config.make_optimizer(net) for m, net in nets.items()}
        memory = {m: _full_pass(net, xs[m]) for m, net in nets.items()}
        codes = update_codes(*(memory[m].cpu().double().numpy() for m in ("image", "text")), graph, weight)

        def epoch(number: int) -> dict:
            """Algorithm 1: the image network, then the text network, then B."""
            nonlocal codes
            lr = config.learning_rate(number - 1)
            deep.set_learning_rate(optimizers.values(), lr)
            target = torch.as_tensor(codes, dtype=torch.float32, device=device)
            text_rows = _text_rows(xs["text"], views, config.views_per_item, rng)
            rows = {"image": EpochRows.own(xs["image"]), "text": text_rows}
            steps = {m: _network_step(m, nets[m], optimizers[m], rows[m], y, memory, target, config, rng) for m in nets}
            new_codes = update_codes(*(memory[m].cpu().double().numpy() for m in ("image", "text")), graph, weight)
            flips = int((new_codes != codes).sum())
            codes = new_codes
            record = _epoch_record(steps, memory, codes.astype(np.float64), flips, graph, config)
            return deep.epoch_fields(number, lr) | record

        history = deep.run_epochs(
            "DMSFH",
            config.epochs,
            epoch,
            lambda so_far: _hasher(nets, config, seed, so_far),
            [],
            monitor,
            config.eval_every,
        )
    return _hasher(nets, config, seed, history)


def _hasher(nets: dict[str, DMSFHNet], config: DMSFHConfig, seed: int, history: list[dict]) -> TrainedHasher:
    """The hasher as it stands: the networks without their label layers, frozen (float64, CPU)."""
    return deep.frozen_hasher("dmsfh", nets, config, seed, history, drop=("label",))
