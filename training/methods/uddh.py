"""UDDH — Unsupervised Dual Deep Hashing with semantic index and content code (Zhang et al., TPAMI 2024).

Each modality i has a network with two tanh-relaxed heads: the modality-shared head N_i^c (l^c bits) and
the modality-specific head N_i^s (l^s bits). The text network's trunk is the encoder of a deep
autoencoder (Eq. 4). Training alternates (Algorithm 1) between

1. the networks: regress N̂_i^c on B^c and N̂_i^s on B_i^s, plus the autoencoder loss (Eq. 3, 4);
2. B^c = sign(C H + Σ_i N̂_i^c)                                              (Eq. 12);
3. the binary centers C, one center at a time (discrete cyclic coordinate descent, Eq. 16);
4. the semantic index H: each item's top-e nearest centers by Hamming distance (Eq. 19);
5. the specific codes B_i^s from the network outputs and the same-cluster affinity graph (Eq. 8, 22).

The hash function of a modality outputs [N̂^c | N̂^s]: the first l^c bits are the head code that routes a
query to its semantic-index bucket (the centers C), the rest is the content code.

Layout: the paper is column-major (bits × n); here every code matrix is row-major (n, bits), so
``centers`` (k, l^c) = Cᵀ and ``assignments`` (n, e) lists, per item, the indices of the centers where
its column of H holds a one (nearest first).

Choices where the paper is vague, and why:

* Networks. There is no pretrained ResNet18 offline and our image input is already a feature vector, so
  the image network is an MLP (``image_hidden``) playing the backbone, and each head is the paper's
  "new fully connected layer and regression layer": FC–ReLU–FC–tanh. The text trunk is the
  autoencoder's encoder (``text_hidden``); its decoder mirrors it with a linear output. Eq. 8's deep
  feature N̄_i^s is the hidden layer of the specific head ("the last hidden fully-connected layer").
* Inputs. Image features are z-scored per dimension; text features are divided by one global scale
  (their root mean square), so a sparse bag of words stays sparse and a rare word is not blown up by
  a tiny per-word deviation. Both steps are part of the network, hence of the exported graph. The
  autoencoder reconstructs the scaled text.
* Losses are sums over bits and mean over the minibatch (Eq. 3–4 per item); ``history`` records the
  Eq. 9 terms as sums over the training set after each outer iteration's code updates.
* Schedule. The paper (§IV): Adam (β₁ = 0.9), weight decay 1e-4, lr 3e-4 image / 3e-3 text, batch 20,
  5 epochs per outer iteration, lr ÷10 every 3 epochs, 10 outer iterations: ``UDDHConfig.paper``. The
  decay restarts with a fresh optimizer at every outer iteration: counted over all 50 epochs it would
  reach lr·1e-16 and freeze the networks after the first round, while each round is a new regression
  onto new codes. The default (CPU) preset keeps all of that but batch 128 and 3 epochs (lr ÷10 after
  2): ~10× fewer optimizer steps. On OpenClipart (64 bits, k = 64, seed 0, 2 cores) it took 76 s vs
  187 s, with the same mAP (i2t 0.429 vs 0.419, t2i 0.424 vs 0.423) but a lower MAP@50 (i2t 0.630 vs
  0.656, t2i 0.686 vs 0.744).
* Initial codes (not given). B^c and B^s start from the classic CCA hashing codes (``train_cca``):
  B^c the signs of the summed image and text projections on the top l^c canonical directions, both
  B_i^s on the next l^s. Round 1 then regresses onto codes both modalities can predict; random codes
  would make the first rounds fit noise. There are only r = min(image dim, text dim) canonical
  directions (10 for Wikipedia's LDA texts), so bits past r are random hyperplanes through the CCA
  space, each direction weighted by its canonical correlation (:func:`initial_signs`). The initial
  centers are the codes of k random items.
* k and e. The paper sets k to the number of categories and e to the number of labels of an item; UDDH
  is unsupervised, so both are hyper-parameters here (e = 1 by default). With e > 1 the column of H
  holds e ones and C H is the sum of the e centers, as written; top-e (Eq. 19) is the paper's rule and
  the exact minimiser of Eq. 18 only for e = 1.
* Eq. 8 is printed as exp(+‖·‖²/2σ²); the minus sign is meant (affinity must fall with distance).
  σ is per modality and iteration: 2σ² is the mean squared distance between distinct same-cluster
  pairs, so a typical pair weighs e⁻¹. "H_p = H_q" is read literally: same set of e centers.
* The coupling term. Eq. 6 minimises Tr(B_i^s (L_i + L_j) B_j^sᵀ) with L = D − A. Its degree part
  Tr(B_i^s D B_j^sᵀ) = Σ_p d_p b_ip·b_jp rewards every item's image and text codes for *disagreeing*,
  weighted by its degree, which outweighs everything else: Eq. 22 then sets B_1^s ≈ −B_2^s, useless
  for cross-modal Hamming ranking and contrary to the stated aim ("preserve the modality-correlated
  codes"). We drop D and normalise: the term is −λ Tr(B_1^s Ã B_2^sᵀ) with Ã = D^{-1/2}(A_1 + A_2)
  D^{-1/2}, which equals λ/2 Σ_pq Ã_pq ‖b_1p − b_2q‖² up to a constant (binary codes): cross-modal
  affinity preservation. The normalisation keeps Ã B ∈ [−1, 1]-ish whatever the cluster sizes; with
  raw A, the ~n/k neighbours would outvote the network term 2N̂ ∈ (−2, 2) and erase item content.
  λ = ``affinity_weight`` (1, as Eq. 9's implicit weight).
* Eq. 22 for both modalities. Eq. 20 keeps only j > i, so read literally the text codes would ignore
  the coupling although Eq. 9 contains it. We take the exact block minimiser of Eq. 9 for each
  modality in turn (image, then text with the new image codes): B_1^s = sign(2N̂_1^s + λ Ã B_2^s),
  B_2^s = sign(2N̂_2^s + λ Ã B_1^s), so the step never increases the objective.
* Ties. Eq. 12 and 22 map an exact 0 to −1 (``training.codes``); in Eq. 16 a zero argument keeps the
  center's current bit (both are optimal; keeping it avoids churn). Eq. 19 ties go to the lower index.
* Empty clusters. After Eq. 19, each empty cluster is re-seeded with the code of the item farthest (in
  Hamming distance) from its nearest assigned center, among items that can give up one of their
  assignment slots without emptying another cluster; that item's farthest such slot moves to the
  re-seeded center (nearest, at distance 0). For e = 1 this only lowers ‖B^c − CH‖² and is the usual
  k-means fix; every cluster then has a member, so every bucket of the index is reachable.
* Parity. The encoders are ``TorchHashEncoder``: float64 copies of the networks, exported as traced.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from index.centers import center_sums, kmeans_loss, nearest_centers, reseed_empty_clusters, update_centers
from training.codes import to_signs
from training.methods.base import MODALITIES, TrainedHasher, check_features
from training.methods.baselines import train_cca
from training.methods.torch_encoder import frozen_hasher, torch_threads

_CHUNK = 2048  # rows per block for distances, affinities and full-batch network passes


@dataclass(frozen=True)
class UDDHConfig:
    """Hyper-parameters. The defaults are the CPU preset: the paper's optimiser, learning rates, weight
    decay, step decay and 10 outer iterations, with batch 128 and 3 epochs per outer iteration (lr ÷10
    after 2) instead of batch 20 and 5 epochs (lr ÷10 after 3), which :meth:`paper` restores: about 10×
    the optimizer steps, 2.5–4× the time on two CPU cores at n ≈ 6,000 (module docstring)."""

    shared_bits: int  # l^c, the head code; a multiple of 8 because the index packs it to bytes
    specific_bits: int  # l^s
    n_clusters: int  # k, the number of binary centers (semantic-index buckets)
    top_e: int = 1  # e, centers per item (Eq. 19 top-e)
    outer_iterations: int = 10
    epochs_per_iteration: int = 3
    lr_step_epochs: int = 2  # lr × lr_step_factor every this many epochs, restarted every outer iteration
    lr_step_factor: float = 0.1
    image_lr: float = 3e-4
    text_lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    image_hidden: tuple[int, ...] = (256,)  # the image backbone MLP
    text_hidden: tuple[int, ...] = (256,)  # the autoencoder's encoder = the text backbone
    head_hidden: int = 128  # hidden FC layer of every head (N̄ of Eq. 8 for the specific heads)
    affinity_weight: float = 1.0  # λ of the cross-modal affinity term (module docstring)
    device: str = "cpu"
    # torch intra-op threads while training (restored after). Minibatch products of 128 rows gain little
    # from more threads and lose a lot when the cores are shared: 41 s with 1 vs 259 s with 2 threads for
    # the same n = 5,900 run on a 2-core machine under a load of ~3.5. None keeps torch's setting.
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_hidden", tuple(self.image_hidden))  # lists from JSON configs
        object.__setattr__(self, "text_hidden", tuple(self.text_hidden))
        if self.shared_bits < 8 or self.shared_bits % 8:
            raise ValueError(f"shared_bits (l^c) must be a positive multiple of 8, got {self.shared_bits}")
        if self.specific_bits < 1:
            raise ValueError(f"specific_bits (l^s) must be positive, got {self.specific_bits}")
        if self.n_clusters < 1 or not 1 <= self.top_e <= self.n_clusters:
            raise ValueError(f"need 1 ≤ top_e ≤ n_clusters, got e={self.top_e}, k={self.n_clusters}")
        positive = (self.outer_iterations, self.epochs_per_iteration, self.lr_step_epochs, self.batch_size)
        if min(positive) < 1 or self.head_hidden < 1 or not self.text_hidden:
            raise ValueError("iterations, epochs, step, batch size, head_hidden and text_hidden must be set")
        if min(self.image_hidden + self.text_hidden) < 1:
            raise ValueError("hidden layer sizes must be positive")
        if not (self.image_lr > 0 and self.text_lr > 0 and 0 < self.lr_step_factor <= 1):
            raise ValueError("learning rates must be positive and lr_step_factor in (0, 1]")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be positive or None, got {self.torch_threads}")
        if self.weight_decay < 0 or self.affinity_weight < 0:
            raise ValueError("weight_decay and affinity_weight must be non-negative")

    @property
    def bits(self) -> int:
        return self.shared_bits + self.specific_bits

    @classmethod
    def paper(cls, shared_bits: int, specific_bits: int, n_clusters: int, **overrides) -> UDDHConfig:
        """The paper's schedule (§IV): batch 20, 5 epochs per outer iteration, lr ÷10 every 3 epochs."""
        schedule = {"batch_size": 20, "epochs_per_iteration": 5, "lr_step_epochs": 3}
        return cls(shared_bits, specific_bits, n_clusters, **(schedule | overrides))


@dataclass
class UDDHResult:
    """The trained hasher, the binary centers C and the training items' semantic index H."""

    hasher: TrainedHasher
    centers: np.ndarray  # (k, l^c) int8 in {−1, +1}
    assignments: np.ndarray  # (n, e) int64: the centers of each training item, nearest first


# -- networks ------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers


class _Head(nn.Module):
    """N^c or N^s: a hidden FC layer (the deep feature N̄) and a tanh-relaxed regression layer (Eq. 3)."""

    def __init__(self, fan_in: int, hidden: int, bits: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(fan_in, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, bits)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.hidden(z)
        return torch.tanh(self.out(feature)), feature


class UDDHNet(nn.Module):
    """One modality's network: input scaling, backbone, shared and specific heads (and the text decoder).

    ``forward`` is the hash function: float32 features → [N̂^c | N̂^s] in the module's dtype.
    """

    def __init__(
        self,
        shift: np.ndarray,
        scale: np.ndarray,
        hidden: Sequence[int],
        config: UDDHConfig,
        autoencoder: bool,
    ) -> None:
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale, dtype=torch.float32))
        sizes = (len(shift), *hidden)
        self.backbone = nn.Sequential(*_mlp(sizes))
        self.shared = _Head(sizes[-1], config.head_hidden, config.shared_bits)
        self.specific = _Head(sizes[-1], config.head_hidden, config.specific_bits)
        self.decoder = nn.Sequential(*_mlp(sizes[::-1])[:-1]) if autoencoder else None

    @property
    def input_dim(self) -> int:
        return self.shift.shape[0]

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.shift.dtype) - self.shift) * self.inv_scale

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scaled input, backbone output, N̂^c, N̂^s, N̄^s): the heads tanh-relaxed, N̄^s for Eq. 8."""
        xs = self.scaled(x)
        z = self.backbone(xs)
        shared, _ = self.shared(z)
        specific, feature = self.specific(z)
        return xs, z, shared, specific, feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, shared, specific, _ = self.parts(x)
        return torch.cat([shared, specific], dim=1)


# -- discrete steps ------------------------------------------------------------------------------------


def update_shared_codes(
    shared_outputs: Sequence[np.ndarray], centers: np.ndarray, assignments: np.ndarray
) -> np.ndarray:
    """Eq. 12: B^c = sign(C H + Σ_i N̂_i^c), the exact minimiser of Eq. 10; int8 ±1 (n, l^c)."""
    return to_signs(center_sums(centers, assignments) + sum(np.asarray(o, np.float64) for o in shared_outputs))


class SameClusterAffinity:
    """Ã = D^{-1/2} (A_1 + A_2) D^{-1/2}, A_i of Eq. 8: RBF on deep features, zero unless H_p = H_q.

    Never n × n: products are computed per group of items with the same centers, in row blocks, so
    memory is O(block × group) and time O(Σ_groups size²).
    """

    def __init__(self, features: Sequence[np.ndarray], assignments: np.ndarray) -> None:
        self.features = [np.asarray(f, dtype=np.float64) for f in features]
        _, group_of = np.unique(np.sort(assignments, axis=1), axis=0, return_inverse=True)
        order = np.argsort(group_of.ravel(), kind="stable")
        self.groups = np.split(order, np.flatnonzero(np.diff(group_of.ravel()[order])) + 1)
        self.two_sigma_sq = [self._mean_pair_sq_distance(f) for f in self.features]
        self.degree = np.zeros(len(assignments))
        for rows, _, block in self._blocks():
            self.degree[rows] = block.sum(1)

    def _mean_pair_sq_distance(self, f: np.ndarray) -> float:
        """Mean ‖f_p − f_q‖² over distinct same-group pairs: Σ_pq = 2s Σ‖f‖² − 2‖Σf‖² per group."""
        total = pairs = 0.0
        for g in self.groups:
            fg = f[g]
            total += 2 * len(g) * float((fg * fg).sum()) - 2 * float((fg.sum(0) ** 2).sum())
            pairs += len(g) * (len(g) - 1)
        mean = total / pairs if pairs else 0.0
        return mean if mean > 0 else 1.0

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, group, A_1 + A_2 restricted to rows × group) for every row block of every group."""
        for g in self.groups:
            for start in range(0, len(g), _CHUNK):
                rows = g[start : start + _CHUNK]
                block = np.zeros((len(rows), len(g)))
                for f, two_sigma_sq in zip(self.features, self.two_sigma_sq, strict=True):
                    fr, fg = f[rows], f[g]
                    sq = (fr * fr).sum(1)[:, None] + (fg * fg).sum(1)[None, :] - 2 * fr @ fg.T
                    block += np.exp(-np.maximum(sq, 0.0) / two_sigma_sq)
                yield rows, g, block

    def product(self, m: np.ndarray) -> np.ndarray:
        """Ã m for m (n, r)."""
        root = np.sqrt(self.degree)[:, None]
        scaled, out = np.asarray(m, dtype=np.float64) / root, np.zeros(np.shape(m))
        for rows, g, block in self._blocks():
            out[rows] = block @ scaled[g]
        return out / root


def affinity_term(codes: Sequence[np.ndarray], affinity: SameClusterAffinity, weight: float) -> float:
    """−λ Tr(B_1^s Ã B_2^sᵀ): the cross-modal affinity term of Eq. 9 as used here (module docstring)."""
    return -weight * float((np.asarray(codes[0], np.float64) * affinity.product(codes[1])).sum())


def specific_objective(
    outputs: Sequence[np.ndarray], codes: Sequence[np.ndarray], affinity: SameClusterAffinity, weight: float
) -> float:
    """The part of Eq. 9 that depends on the B_i^s: Σ_i ‖N̂_i^s − B_i^s‖² − λ Tr(B_1^s Ã B_2^sᵀ)."""
    fit = sum(float(((np.asarray(o) - np.asarray(b)) ** 2).sum()) for o, b in zip(outputs, codes, strict=True))
    return fit + affinity_term(codes, affinity, weight)


def update_specific_codes(
    outputs: Sequence[np.ndarray], codes: Sequence[np.ndarray], affinity: SameClusterAffinity, weight: float
) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 22 for image then text: B_i^s = sign(2N̂_i^s + λ Ã B_j^s), each the exact block minimiser."""
    image = to_signs(2 * np.asarray(outputs[0]) + weight * affinity.product(codes[1]))
    text = to_signs(2 * np.asarray(outputs[1]) + weight * affinity.product(image))
    return image, text


# -- training ------------------------------------------------------------------------------------------


@dataclass
class _Outputs:
    """Full-training-set network outputs of one modality, float64."""

    shared: np.ndarray
    specific: np.ndarray
    feature: np.ndarray  # N̄^s, the specific head's hidden layer
    reconstruction: float  # ‖N̂^AE(X) − X‖² for the text network, 0 for the image network


def _full_pass(net: UDDHNet, x: torch.Tensor) -> _Outputs:
    parts: dict[str, list[torch.Tensor]] = {"shared": [], "specific": [], "feature": []}
    reconstruction = 0.0
    net.eval()
    with torch.no_grad():
        for start in range(0, len(x), _CHUNK):
            xs, z, shared, specific, feature = net.parts(x[start : start + _CHUNK])
            parts["shared"].append(shared)
            parts["specific"].append(specific)
            parts["feature"].append(feature)
            if net.decoder is not None:
                reconstruction += float(((net.decoder(z) - xs) ** 2).sum())
    arrays = {k: torch.cat(v).cpu().double().numpy() for k, v in parts.items()}
    return _Outputs(**arrays, reconstruction=reconstruction)


def _train_network(
    net: UDDHNet,
    x: torch.Tensor,
    shared_codes: torch.Tensor,
    specific_codes: torch.Tensor,
    lr: float,
    config: UDDHConfig,
    rng: np.random.Generator,
) -> None:
    """Algorithm 1 step 2 for one modality: minibatch Adam on Eq. 3 (image) or Eq. 4 (text)."""
    net.train()
    optimizer = torch.optim.Adam(
        net.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=config.weight_decay, fused=True
    )
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_step_factor)
    for _ in range(config.epochs_per_iteration):
        order = torch.from_numpy(rng.permutation(len(x))).to(x.device)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            xs, z, shared, specific, _ = net.parts(x[batch])
            loss = ((shared - shared_codes[batch]) ** 2).sum(1) + ((specific - specific_codes[batch]) ** 2).sum(1)
            if net.decoder is not None:
                loss = loss + ((net.decoder(z) - xs) ** 2).sum(1)
            optimizer.zero_grad(set_to_none=True)
            loss.mean().backward()
            optimizer.step()
        schedule.step()


def _input_scaling(x: np.ndarray, per_dimension: bool) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale): z-scores per dimension (image) or one global RMS scale (text); see module notes."""
    if per_dimension:
        std = x.std(axis=0)
        return x.mean(axis=0), np.where(std > 1e-8 * std.max(), std, 1.0)  # constant columns pass through
    return np.zeros(x.shape[1]), np.full(x.shape[1], np.sqrt(np.mean(x * x)))


def _check_inputs(image: np.ndarray, text: np.ndarray, config: UDDHConfig) -> tuple[np.ndarray, np.ndarray]:
    image, text = check_features("image", image), check_features("text", text)
    n = len(image)
    if len(text) != n:
        raise ValueError(f"image and text must be paired row by row: {n} vs {len(text)} rows")
    for name, x in (("image", image), ("text", text)):
        if not x.any():
            raise ValueError(f"every {name} training row has zero norm: there is nothing to learn from")
    if config.n_clusters > n:
        raise ValueError(f"{config.n_clusters} clusters (k) requested but only {n} training items")
    return image, text


@dataclass(frozen=True)
class _Codes:
    """The discrete variables of Eq. 9: B^c, B_i^s per modality, C and H (row-major, see module notes)."""

    shared: np.ndarray  # (n, l^c) int8
    specific: dict[str, np.ndarray]  # modality → (n, l^s) int8
    centers: np.ndarray  # (k, l^c) int8
    assignments: np.ndarray  # (n, e) int64


def initial_signs(image: np.ndarray, text: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """(n, bits) int8 ±1 initial codes that both modalities can predict, for any code length: the signs
    of the summed image and text projections of :func:`train_cca` — CCA hashing on the r = min(image
    dim, text dim) canonical directions, then random hyperplanes through the CCA space, each direction
    weighted by its canonical correlation, so the uncorrelated ones (e.g. the null direction of topic
    proportions summing to 1) add no noise. The rng is drawn from only when bits > r.
    """
    cca = train_cca(image, text, bits, rng)
    return to_signs(cca.encoders["image"].real_codes(image) + cca.encoders["text"].real_codes(text))


def _initial_state(image: np.ndarray, text: np.ndarray, config: UDDHConfig, rng: np.random.Generator) -> _Codes:
    """B^c, B^s from :func:`initial_signs` (first l^c bits shared, the rest specific); C from k random items' B^c."""
    signs = initial_signs(image, text, config.bits, rng)
    shared, specific = signs[:, : config.shared_bits], signs[:, config.shared_bits :]
    centers = shared[rng.choice(len(shared), size=config.n_clusters, replace=False)]
    centers, assignments = reseed_empty_clusters(shared, centers, nearest_centers(shared, centers, config.top_e))
    return _Codes(shared, {m: specific for m in MODALITIES}, centers, assignments)


def _update_codes(
    outputs: dict[str, _Outputs], codes: _Codes, config: UDDHConfig
) -> tuple[_Codes, SameClusterAffinity]:
    """Algorithm 1 steps 3–8 with the networks fixed: Eq. 12, 16, 19 (+ re-seeding), then Eq. 22."""
    shared = update_shared_codes([outputs[m].shared for m in MODALITIES], codes.centers, codes.assignments)
    centers = update_centers(shared, codes.centers, codes.assignments)
    centers, assignments = reseed_empty_clusters(shared, centers, nearest_centers(shared, centers, config.top_e))
    affinity = SameClusterAffinity([outputs[m].feature for m in MODALITIES], assignments)
    specific = update_specific_codes(
        [outputs[m].specific for m in MODALITIES],
        [codes.specific[m] for m in MODALITIES],
        affinity,
        config.affinity_weight,
    )
    return _Codes(shared, dict(zip(MODALITIES, specific, strict=True)), centers, assignments), affinity


def _record(
    outputs: dict[str, _Outputs], old: _Codes, new: _Codes, affinity: SameClusterAffinity, config: UDDHConfig
) -> dict:
    """The Eq. 9 terms (sums over the training set) after an outer iteration, and how much moved."""
    terms = {
        f"hash_{m}": float(((o.shared - new.shared) ** 2).sum() + ((o.specific - new.specific[m]) ** 2).sum())
        for m, o in outputs.items()
    }
    terms["autoencoder"] = outputs["text"].reconstruction
    terms["kmeans"] = kmeans_loss(new.shared, new.centers, new.assignments)
    terms["affinity"] = affinity_term([new.specific[m] for m in MODALITIES], affinity, config.affinity_weight)
    sizes = np.bincount(new.assignments.ravel(), minlength=config.n_clusters)
    return terms | {
        "objective": sum(terms.values()),
        "shared_bit_flips": int((new.shared != old.shared).sum()),
        "specific_bit_flips": int(sum((new.specific[m] != old.specific[m]).sum() for m in MODALITIES)),
        "smallest_cluster": int(sizes.min()),
        "largest_cluster": int(sizes.max()),
    }


def train_uddh(
    image: np.ndarray,
    text: np.ndarray,
    config: UDDHConfig,
    seed: int = 0,
    progress: bool = False,
    eval_fn: Callable[[TrainedHasher], float] | None = None,
) -> UDDHResult:
    """Train on paired rows of ``image`` and ``text`` features (no labels); input is checked up front.

    ``eval_fn`` (e.g. MAP@50 on a held-out split) is called on the current hasher after every outer
    iteration and its value lands in ``history``; ``progress`` shows a tqdm bar with loss and that value.
    """
    features = dict(zip(MODALITIES, _check_inputs(image, text, config), strict=True))
    rng = np.random.default_rng(seed)
    codes = _initial_state(features["image"], features["text"], config, rng)
    device = torch.device(config.device)
    xs = {m: torch.as_tensor(v, dtype=torch.float32, device=device) for m, v in features.items()}
    lrs = {"image": config.image_lr, "text": config.text_lr}
    history: list[dict] = []
    with torch.random.fork_rng(devices=[]), torch_threads(config.torch_threads):
        torch.manual_seed(seed)
        nets = {
            "image": UDDHNet(*_input_scaling(features["image"], True), config.image_hidden, config, False),
            "text": UDDHNet(*_input_scaling(features["text"], False), config.text_hidden, config, True),
        }
        for net in nets.values():
            net.to(device)
        bar = tqdm(range(1, config.outer_iterations + 1), desc="UDDH", disable=not progress)
        for iteration in bar:
            outputs = {}
            for m, net in nets.items():
                targets = [
                    torch.as_tensor(c, dtype=torch.float32, device=device) for c in (codes.shared, codes.specific[m])
                ]
                _train_network(net, xs[m], *targets, lrs[m], config, rng)
                outputs[m] = _full_pass(net, xs[m])
            new_codes, affinity = _update_codes(outputs, codes, config)
            record = {"iteration": iteration} | _record(outputs, codes, new_codes, affinity, config)
            codes = new_codes
            if eval_fn is not None:
                record["eval"] = float(eval_fn(_hasher(nets, codes, config, seed, [*history, record])))
            history.append(record)
            bar.set_postfix({k: f"{record[k]:.4g}" for k in ("objective", "eval") if k in record})
    return UDDHResult(_hasher(nets, codes, config, seed, history), codes.centers, codes.assignments)


def _hasher(
    nets: dict[str, UDDHNet], codes: _Codes, config: UDDHConfig, seed: int, history: list[dict]
) -> TrainedHasher:
    """The hasher as it stands; its head is the shared code (first l^c bits) and the centers C."""
    return frozen_hasher(
        "uddh",
        nets,
        config,
        seed,
        history,
        drop=("decoder",),
        head_bits=config.shared_bits,
        centers=codes.centers.copy(),
    )
