"""UDDH — Unsupervised Dual Deep Hashing with semantic index and content code (Zhang, Zhang, Li, Chen,
Akutsu, Cheung, Cai; IEEE TPAMI 2024).

Each modality's network has a shared head N^c (l^c bits) and a specific head N^s (l^s bits); the text
trunk is the encoder of an autoencoder. Training alternates (Algorithm 1) the networks (Eq. 3–4), the
shared codes B^c (Eq. 12), the binary centers C (Eq. 16), the semantic index H (Eq. 19) and the specific
codes B_i^s with a same-cluster affinity graph (Eq. 8, 22). A hash function outputs [N̂^c | N̂^s]: the
first l^c bits route a query to its semantic-index bucket (the centers C), the rest is the content code.
No labels are used. Row-major throughout: ``centers`` (k, l^c) = Cᵀ.

The networks, inputs, schedule, initial codes, k and e, the sign of Eq. 8, the coupling term, Eq. 22 for
both modalities, ties and empty clusters, with the measurements behind them: ``docs/methods/uddh.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from index.centers import center_sums, kmeans_loss, nearest_centers, reseed_empty_clusters, update_centers
from index.codes import check_code_bits, to_signs
from training.methods import deep
from training.methods.base import MODALITIES, TrainedHasher, check_features
from training.methods.baselines import train_cca

_CHUNK = 2048  # rows per block of the same-cluster affinity products
Array = torch.Tensor | np.ndarray  # the network losses take either


@dataclass(frozen=True)
class UDDHConfig:
    """Hyper-parameters. The defaults are the CPU preset: the paper's optimiser, learning rates, weight
    decay, step decay and 10 outer iterations, with batch 128 and 3 epochs per outer iteration (lr ÷10
    after 2) instead of batch 20 and 5 epochs (lr ÷10 after 3), which :meth:`paper` restores: about 10×
    the optimizer steps, 2.5–4× the time on two CPU cores at n ≈ 6,000 (docs/methods/uddh.md)."""

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
    affinity_weight: float = 1.0  # λ of the cross-modal affinity term (docs/methods/uddh.md)
    center_weight: float = 1.0  # μ of μ‖B^c − CH‖² in Eq. 9; the paper's is 1 (0: the ablation in the docs)
    device: str = "cpu"
    torch_threads: int | None = 1  # intra-op threads while training (restored after); None keeps torch's

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_hidden", tuple(self.image_hidden))  # lists from JSON configs
        object.__setattr__(self, "text_hidden", tuple(self.text_hidden))
        check_code_bits(self.shared_bits, "shared_bits (l^c)")
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
        deep.check_torch_threads(self.torch_threads)
        if min(self.weight_decay, self.affinity_weight, self.center_weight) < 0:
            raise ValueError("weight_decay, affinity_weight and center_weight must be non-negative")

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


class _Head(nn.Module):
    """N^c or N^s: a hidden FC layer (the deep feature N̄) and a tanh-relaxed regression layer (Eq. 3)."""

    def __init__(self, fan_in: int, hidden: int, bits: int) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(fan_in, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, bits)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.hidden(z)
        return torch.tanh(self.out(feature)), feature


class UDDHNet(deep.ScaledInputNet):
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
        super().__init__(shift, scale)
        sizes = (len(shift), *hidden)
        self.backbone = nn.Sequential(*deep.mlp(sizes))
        self.shared = _Head(sizes[-1], config.head_hidden, config.shared_bits)
        self.specific = _Head(sizes[-1], config.head_hidden, config.specific_bits)
        self.decoder = nn.Sequential(*deep.mlp(sizes[::-1])[:-1]) if autoencoder else None

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


# -- the network losses (Eq. 3–4), per item: torch tensors in training, numpy arrays in the history ---------


def hash_loss(shared: Array, specific: Array, shared_codes: Array, specific_codes: Array) -> Array:
    """Eq. 3 per item: ‖N̂^c − B^c‖² + ‖N̂^s − B_i^s‖², each row summed over its bits."""
    return ((shared - shared_codes) ** 2).sum(1) + ((specific - specific_codes) ** 2).sum(1)


def reconstruction_loss(decoded: torch.Tensor, scaled: torch.Tensor) -> torch.Tensor:
    """Eq. 4's autoencoder term per item: ‖N̂^AE(X) − X‖² of the scaled text input."""
    return ((decoded - scaled) ** 2).sum(1)


# -- discrete steps ------------------------------------------------------------------------------------


def update_shared_codes(
    shared_outputs: Sequence[np.ndarray], centers: np.ndarray, assignments: np.ndarray, center_weight: float = 1.0
) -> np.ndarray:
    """Eq. 12: B^c = sign(μ C H + Σ_i N̂_i^c), the exact minimiser of Eq. 10 with its k-means term weighted
    by μ (the paper's μ = 1); int8 ±1 (n, l^c)."""
    outputs = sum(np.asarray(o, np.float64) for o in shared_outputs)
    return to_signs(center_weight * center_sums(centers, assignments) + outputs)


class SameClusterAffinity:
    """Ã = 2I + D^{-1/2} (A_1 + A_2 − 2I) D^{-1/2}, A_i of Eq. 8: RBF on deep features, zero unless H_p = H_q.

    The self pairs (p = q, A_i^pp = 1 in each modality) tie an item's image code to its own text code
    and keep their Eq. 8 weight; only the pairs of distinct items, whose number grows with the cluster,
    are normalised by their degree D (docs/methods/uddh.md, "The coupling term"). Never n × n: products
    are computed per group of items with the same centers, in row blocks, so memory is O(block × group)
    and time O(Σ_groups size²).
    """

    def __init__(self, features: Sequence[np.ndarray], assignments: np.ndarray) -> None:
        self.features = [np.asarray(f, dtype=np.float64) for f in features]
        _, group_of = np.unique(np.sort(assignments, axis=1), axis=0, return_inverse=True)
        order = np.argsort(group_of.ravel(), kind="stable")
        self.groups = np.split(order, np.flatnonzero(np.diff(group_of.ravel()[order])) + 1)
        self.two_sigma_sq = [self._mean_pair_sq_distance(f) for f in self.features]
        self.self_weight = float(len(self.features))  # Σ_i A_i^pp = Σ_i exp(0)
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
        """(rows, group, A_1 + A_2 of distinct items restricted to rows × group) for every row block of
        every group: the self pairs are zero here (they are ``self_weight``)."""
        for g in self.groups:
            for start in range(0, len(g), _CHUNK):
                rows = g[start : start + _CHUNK]
                block = np.zeros((len(rows), len(g)))
                for f, two_sigma_sq in zip(self.features, self.two_sigma_sq, strict=True):
                    fr, fg = f[rows], f[g]
                    sq = (fr * fr).sum(1)[:, None] + (fg * fg).sum(1)[None, :] - 2 * fr @ fg.T
                    block += np.exp(-np.maximum(sq, 0.0) / two_sigma_sq)
                block[np.arange(len(rows)), start + np.arange(len(rows))] = 0.0
                yield rows, g, block

    def neighbour_product(self, m: np.ndarray) -> np.ndarray:
        """D^{-1/2} (A_1 + A_2 − 2I) D^{-1/2} m for m (n, r): the pairs of distinct items only."""
        root = np.sqrt(np.where(self.degree > 0, self.degree, 1.0))[:, None]  # a lone item has no pairs
        scaled, out = np.asarray(m, dtype=np.float64) / root, np.zeros(np.shape(m))
        for rows, g, block in self._blocks():
            out[rows] = block @ scaled[g]
        return out / root

    def product(self, m: np.ndarray) -> np.ndarray:
        """Ã m for m (n, r)."""
        return self.self_weight * np.asarray(m, dtype=np.float64) + self.neighbour_product(m)


def affinity_term(codes: Sequence[np.ndarray], affinity: SameClusterAffinity, weight: float) -> float:
    """−λ Tr(B_1^s Ã B_2^sᵀ): the cross-modal affinity term of Eq. 9 as used here (docs/methods/uddh.md)."""
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
    """Eq. 22 for image then text: B_i^s = sign(2N̂_i^s + λ Ã B_j^s), each the exact block minimiser,
    started from a joint proposal. The self pair ties B_1^s to B_2^s so strongly that one network alone
    can never flip a bit; the proposal B_1^s = B_2^s = sign(2(N̂_1^s + N̂_2^s) + λ Ã_pairs (B_1^s + B_2^s))
    (Eq. 9 restricted to equal codes, its pair term linearised at the current codes) lets the two networks
    move a shared bit together. It is kept only where it lowers Eq. 9, so the step never increases it."""
    image_out, text_out = (np.asarray(o, dtype=np.float64) for o in outputs)
    pairs = affinity.neighbour_product(np.asarray(codes[0], np.float64) + np.asarray(codes[1], np.float64))
    joint = to_signs(2 * (image_out + text_out) + weight * pairs)
    if specific_objective(outputs, [joint, joint], affinity, weight) < specific_objective(
        outputs, codes, affinity, weight
    ):
        codes = (joint, joint)
    image = to_signs(2 * image_out + weight * affinity.product(codes[1]))
    text = to_signs(2 * text_out + weight * affinity.product(image))
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
    def forward(rows: slice) -> dict[str, torch.Tensor]:
        xs, z, shared, specific, feature = net.parts(x[rows])
        out = {"shared": shared, "specific": specific, "feature": feature}
        if net.decoder is not None:
            out["reconstruction"] = reconstruction_loss(net.decoder(z), xs)
        return out

    parts = deep.full_pass([net], len(x), forward)
    reconstruction = float(parts.pop("reconstruction").double().sum()) if "reconstruction" in parts else 0.0
    return _Outputs(**{k: v.cpu().double().numpy() for k, v in parts.items()}, reconstruction=reconstruction)


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
    optimizer = deep.make_optimizer(net.parameters(), "adam", lr, config.weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step_epochs, config.lr_step_factor)
    for _ in range(config.epochs_per_iteration):
        for batch in deep.minibatches(rng, len(x), config.batch_size, x.device):
            xs, z, shared, specific, _ = net.parts(x[batch])
            loss = hash_loss(shared, specific, shared_codes[batch], specific_codes[batch])
            if net.decoder is not None:
                loss = loss + reconstruction_loss(net.decoder(z), xs)
            deep.descend(optimizer, loss.mean())
        schedule.step()


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
    """The discrete variables of Eq. 9: B^c, B_i^s per modality, C and H (row-major, see docs/methods/uddh.md)."""

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
    shared = update_shared_codes(
        [outputs[m].shared for m in MODALITIES], codes.centers, codes.assignments, config.center_weight
    )
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
    """The Eq. 9 terms (sums over the training set) after an outer iteration, how much moved, and the
    diagnostics of docs/methods/uddh.md: how well each network fits the codes it regressed onto, how
    often an item's image and text specific codes agree, how much of B^c equals its center (collapse
    onto the k centers) and the mean |bit mean| of the image codes (0: every bit balanced)."""
    terms = {
        f"hash_{m}": float(hash_loss(o.shared, o.specific, new.shared, new.specific[m]).sum())
        for m, o in outputs.items()
    }
    terms["autoencoder"] = outputs["text"].reconstruction
    terms["kmeans"] = config.center_weight * kmeans_loss(new.shared, new.centers, new.assignments)
    terms["affinity"] = affinity_term([new.specific[m] for m in MODALITIES], affinity, config.affinity_weight)
    sizes = np.bincount(new.assignments.ravel(), minlength=config.n_clusters)
    fit = {
        f"fit_{m}": float(
            (to_signs(np.hstack([o.shared, o.specific])) == np.hstack([old.shared, old.specific[m]])).mean()
        )
        for m, o in outputs.items()
    }
    image_codes = np.hstack([new.shared, new.specific["image"]]).astype(np.float64)
    return (
        terms
        | {
            "objective": sum(terms.values()),
            "shared_bit_flips": int((new.shared != old.shared).sum()),
            "specific_bit_flips": int(sum((new.specific[m] != old.specific[m]).sum() for m in MODALITIES)),
            "smallest_cluster": int(sizes.min()),
            "largest_cluster": int(sizes.max()),
        }
        | fit
        | {
            "specific_agreement": float((new.specific["image"] == new.specific["text"]).mean()),
            "shared_at_center": float((new.shared == new.centers[new.assignments[:, 0]]).mean()),
            "bit_imbalance": float(np.abs(image_codes.mean(0)).mean()),
        }
    )


def train_uddh(
    image: np.ndarray, text: np.ndarray, config: UDDHConfig, seed: int = 0, monitor: deep.Monitor | None = None
) -> UDDHResult:
    """Train on paired rows of ``image`` and ``text`` features (no labels); input is checked up front.

    The ``monitor``'s ``eval_fn`` (e.g. MAP@50 on a held-out split) runs after every outer iteration.
    """
    features = dict(zip(MODALITIES, _check_inputs(image, text, config), strict=True))
    rng = np.random.default_rng(seed)
    codes = _initial_state(features["image"], features["text"], config, rng)
    device = torch.device(config.device)
    xs = {m: torch.as_tensor(v, dtype=torch.float32, device=device) for m, v in features.items()}
    lrs = {"image": config.image_lr, "text": config.text_lr}
    with deep.seeded_training(seed, config.torch_threads):
        nets = {
            "image": UDDHNet(*deep.input_scaling(features["image"], True), config.image_hidden, config, False),
            "text": UDDHNet(*deep.input_scaling(features["text"], False), config.text_hidden, config, True),
        }
        for net in nets.values():
            net.to(device)

        def outer_iteration(iteration: int) -> dict:
            """Algorithm 1, one outer iteration: both networks, then the discrete variables."""
            nonlocal codes
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
            return record

        history = deep.run_epochs(
            "UDDH",
            config.outer_iterations,
            outer_iteration,
            lambda so_far: _hasher(nets, codes, config, seed, so_far),
            [],
            monitor,
        )
    return UDDHResult(_hasher(nets, codes, config, seed, history), codes.centers, codes.assignments)


def _hasher(
    nets: dict[str, UDDHNet], codes: _Codes, config: UDDHConfig, seed: int, history: list[dict]
) -> TrainedHasher:
    """The hasher as it stands; its head is the shared code (first l^c bits) and the centers C."""
    return deep.frozen_hasher(
        "uddh",
        nets,
        config,
        seed,
        history,
        drop=("decoder",),
        head_bits=config.shared_bits,
        centers=codes.centers.copy(),
    )
