"""MMACH — Multi-label Modality enhanced Attention based self-supervised deep Cross-modal Hashing (Zou, Wu,
Zhang, Bakker).

Image, text and the multi-labels are three modalities. Encoders give features F^E, G^E, H^E; the
attention (Eq. 2–3) enriches the sparse label feature with the item's own image and text features, and
three hash networks give tanh-relaxed codes (the LabelNet for the labels). A multi-label cross-modal
triplet loss (Eq. 4–6) and quantisation against B = sign of the mean representation (Eq. 7, 9) form
Eq. 10; Algorithm 1 alternates the LabelNet, the image network, the text network, then B. Only the image
and text networks are served: they never see labels.

Ablations, the choices where the paper is vague (encoders, normalised fusion, triplets and margins, the
LabelNet's own term and warm-up, the MSE ablation, optimiser, history) and the tuning log:
``docs/methods/mmach.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from index.codes import to_signs
from training.methods import deep
from training.methods.base import MODALITIES, TrainedHasher, check_paired
from training.methods.deep import Matrix, Monitor

_EPS = 1e-12  # norm clamp of the attention's cosine
STEPS = ("label", "image", "text")  # Algorithm 1's order within an epoch
WARMUP = "label_warmup"  # the LabelNet alone on its own pair term, before the alternation
PAIR_LOSSES = ("triplet", "mse")


@dataclass(frozen=True)
class MMACHConfig(deep.GeometricSchedule):
    """Hyper-parameters. The defaults are the CPU preset: the paper's α, batch size and alternation with
    Adam (lr 3e-3 lowered geometrically to 1e-5), 20 epochs, narrower networks (c = 256, image/text hash
    layers 1024–256, LabelNet 1024) and the LabelNet's own triplet term with a 3-epoch warm-up (module
    notes) — a few minutes per code length on OpenClipart on two CPU cores. :meth:`paper` sets the
    paper's schedule, layer sizes and objective."""

    bits: int
    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "adam"  # "adam" or "sgd"
    lr: float = 3e-3  # at the first epoch
    final_lr: float = 1e-5  # at the last epoch; geometric in between
    momentum: float = 0.0  # SGD only
    weight_decay: float = 0.0
    alpha: float = 0.6  # weight of the quantisation loss (Eq. 10; §5.4.1)
    margin: float = 0.1  # γ / k: triplet margin per bit (γ1 = γ2 = γ3 = γ4 = margin · bits)
    encoder_dim: int = 256  # c, the encoders' output (E_I, E_T, E_L)
    hash_hidden: tuple[int, ...] = (1024, 256)  # hidden layers of f and g (paper: 4096, 512)
    label_hidden: int = 1024  # hidden layer of the LabelNet h (paper: 8192)
    attention: bool = True  # False: H^A = H^E, the MLSDCH ablation
    pair_loss: str = "triplet"  # "mse": the MMACH-MSE ablation
    label_self_loss: bool = True  # the LabelNet's own pair term J^LL in the label step (docs/methods/mmach.md)
    label_warmup_epochs: int = 3  # LabelNet epochs on J^LL alone before the alternation (docs/methods/mmach.md)
    device: str = "cpu"
    torch_threads: int | None = 1  # intra-op threads while training (restored after); None keeps torch's

    def __post_init__(self) -> None:
        object.__setattr__(self, "hash_hidden", tuple(self.hash_hidden))  # lists from JSON configs
        if not isinstance(self.bits, int) or self.bits < 1:
            raise ValueError(f"bits must be a positive integer, got {self.bits!r}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.label_warmup_epochs < 0:
            raise ValueError(f"label_warmup_epochs must be non-negative, got {self.label_warmup_epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be at least 2 (triplets are mined in a batch), got {self.batch_size}")
        self.check_schedule()
        if self.alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {self.alpha}")
        if not self.margin > 0:
            raise ValueError(f"margin must be positive (the paper's γ are positive margins), got {self.margin}")
        if self.encoder_dim < 1 or self.label_hidden < 1 or min(self.hash_hidden, default=1) < 1:
            raise ValueError("encoder_dim, label_hidden and hash_hidden sizes must be positive")
        for switch in ("attention", "label_self_loss"):
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"{switch} must be true or false, got {getattr(self, switch)!r}")
        if self.pair_loss not in PAIR_LOSSES:
            raise ValueError(f"pair_loss must be one of {PAIR_LOSSES}, got {self.pair_loss!r}")
        deep.check_torch_threads(self.torch_threads)

    @classmethod
    def paper(cls, bits: int, **overrides) -> MMACHConfig:
        """The paper's settings (§3.7, §5.3, §5.4.1, Algorithm 1): 200 epochs of SGD, learning rate 10^−1.5
        lowered to 1e-6, batch 128, α = 0.6, c = 512, hash layers 4096–512, LabelNet 8192, and Eq. 10
        as printed (no LabelNet self term, no warm-up). The margins are not given: ``margin`` keeps its
        default."""
        settings = deep.PAPER_SGD | {
            "epochs": 200,
            "alpha": 0.6,
            "encoder_dim": 512,
            "hash_hidden": (4096, 512),
            "label_hidden": 8192,
            "label_self_loss": False,
            "label_warmup_epochs": 0,
        }
        return cls(bits, **(settings | overrides))


# -- networks ------------------------------------------------------------------------------------------


def _hash_layers(fan_in: int, hidden: Sequence[int], bits: int) -> nn.Sequential:
    """FC–ReLU hidden layers and a linear output; tanh (Eq. 8) is applied by the caller."""
    sizes = (fan_in, *hidden)
    return nn.Sequential(*deep.mlp(sizes), nn.Linear(sizes[-1], bits))


class ModalityNet(deep.ScaledInputNet):
    """The image or text network: input scaling, encoder (E_I / E_T) and hash network (f / g).

    ``forward`` is the modality's hash function: float32 features → tanh representations (Eq. 8), in the
    module's dtype. It takes the modality's features only.
    """

    def __init__(self, shift: np.ndarray, scale: np.ndarray, config: MMACHConfig) -> None:
        super().__init__(shift, scale)
        self.encoder = nn.Sequential(nn.Linear(len(shift), config.encoder_dim), nn.ReLU())
        self.hash = _hash_layers(config.encoder_dim, config.hash_hidden, config.bits)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's feature F^E or G^E."""
        return self.encoder(self.scaled(x))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder feature F^E or G^E, tanh hash representation)."""
        feature = self.features(x)
        return feature, torch.tanh(self.hash(feature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)[1]


def enhance_labels(
    label_features: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2–3 on L2-normalised features (docs/methods/mmach.md), for rows of the same items:
    (H^A = Ĥ^E + a^IL F̂^E + a^TL Ĝ^E, a^IL, a^TL) with the cosines a^IL = F̂^E·Ĥ^E, a^TL = Ĝ^E·Ĥ^E."""
    f, g, h = (F.normalize(x, dim=1, eps=_EPS) for x in (image_features, text_features, label_features))
    a_il, a_tl = (f * h).sum(1), (g * h).sum(1)
    return h + a_il[:, None] * f + a_tl[:, None] * g, a_il, a_tl


class LabelNet(nn.Module):
    """The label modality (training only): encoder E_L, the attention (Eq. 2–3) and hash network h."""

    def __init__(self, n_labels: int, config: MMACHConfig) -> None:
        super().__init__()
        self.attention = config.attention
        self.encoder = nn.Sequential(nn.Linear(n_labels, config.encoder_dim), nn.ReLU())
        self.hash = _hash_layers(config.encoder_dim, (config.label_hidden,), config.bits)

    def forward(
        self, labels: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(H^hr, a^IL, a^TL) from multi-hot labels and the same items' image and text features; without
        the attention (MLSDCH) H^A = H^E and the weights are None."""
        h_e = self.encoder(labels.to(self.hash[0].weight.dtype))
        if not self.attention:  # H^A = H^E, normalised as with the attention
            return torch.tanh(self.hash(F.normalize(h_e, dim=1, eps=_EPS))), None, None
        h_a, a_il, a_tl = enhance_labels(h_e, image_features, text_features)
        return torch.tanh(self.hash(h_a)), a_il, a_tl


@dataclass
class MMACHNetworks:
    """θ^I, θ^T (exported) and θ^L (training only)."""

    image: ModalityNet
    text: ModalityNet
    label: LabelNet

    def __getitem__(self, step: str) -> nn.Module:
        return getattr(self, step)


def build_networks(image: np.ndarray, text: np.ndarray, n_labels: int, config: MMACHConfig) -> MMACHNetworks:
    """Fresh networks (from torch's current seed), the input scalings fitted on the training features."""
    return MMACHNetworks(
        image=ModalityNet(*deep.input_scaling(image, True), config),
        text=ModalityNet(*deep.input_scaling(text, False), config),
        label=LabelNet(n_labels, config),
    )


# -- loss terms ----------------------------------------------------------------------------------------


def shared_label_counts(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """|y_a ∧ y_b| for every pair of rows, (n_a, n_b)."""
    return labels_a.to(torch.float32) @ labels_b.to(torch.float32).T


def triplet_mask(shared: torch.Tensor) -> torch.Tensor:
    """(b, b, b) bool: [a, p, n] iff anchor a shares more labels with p than with n (Eq. 4–6 triplets)."""
    return shared[:, :, None] > shared[:, None, :]


def mine_triplets(shared: torch.Tensor) -> torch.Tensor:
    """All (anchor, positive, negative) index triplets of ``triplet_mask``, (t, 3) int64."""
    return torch.nonzero(triplet_mask(shared))


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖x_i − y_j‖² for every pair of rows, (n_x, n_y)."""
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)


def triplet_loss(anchors: torch.Tensor, others: torch.Tensor, triplets: torch.Tensor, margin: float) -> torch.Tensor:
    """Eq. 4 over the given (anchor, positive, negative) row triplets (``mine_triplets``): the mean over
    triplets of max(0, ‖a − p‖² − ‖a − n‖² + γ) / k with γ = margin·k; anchors are rows of ``anchors`` (one
    modality), positives and negatives rows of ``others`` (the other). 0, with a graph, without triplets."""
    k = anchors.shape[1]
    if len(triplets) == 0:
        return anchors.sum() * 0.0 + others.sum() * 0.0
    d = squared_distances(anchors, others)
    a, p, n = triplets.T
    return torch.relu(d[a, p] - d[a, n] + margin * k).sum() / (len(triplets) * k)


def cross_modal_triplet_loss(
    label_reps: torch.Tensor, modal_reps: torch.Tensor, triplets: torch.Tensor, margin: float
) -> torch.Tensor:
    """J^IL (Eq. 5) or J^TL (Eq. 6) on rows of one batch: label anchors against the modality's items, plus
    the modality's anchors against the labels' items. The shared-label counts of a batch with itself are
    symmetric, so both directions have the same triplets."""
    label_anchored = triplet_loss(label_reps, modal_reps, triplets, margin)
    return label_anchored + triplet_loss(modal_reps, label_reps, triplets, margin)


def label_cosine(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of multi-hot label rows, (n_a, n_b); 0 for an item without labels."""
    a, b = labels_a.to(torch.float32), labels_b.to(torch.float32)
    return F.normalize(a, dim=1, eps=_EPS) @ F.normalize(b, dim=1, eps=_EPS).T


def mse_pair_loss(x: torch.Tensor, y: torch.Tensor, similarity: torch.Tensor) -> torch.Tensor:
    """MMACH-MSE's pair term: mean over all pairs of (x_i·y_j / k − s_ij)² (docs/methods/mmach.md)."""
    return ((x @ y.T / x.shape[1] - similarity.to(x.dtype)) ** 2).mean()


def quantization_loss(codes: torch.Tensor, *reps: torch.Tensor) -> torch.Tensor:
    """Eq. 9 over the given rows: Σ_reps ‖B − X^hr‖² / (3nk); with all three representations it is the
    paper's formula, with one it is that network's share (same weight)."""
    n, k = codes.shape
    return sum(((codes.to(r.dtype) - r) ** 2).sum() for r in reps) / (3 * n * k)


def unified_codes(image_reps: np.ndarray, text_reps: np.ndarray, label_reps: np.ndarray) -> np.ndarray:
    """Eq. 7: B = sign((F^hr + G^hr + H^hr) / 3), int8 ±1 (an exact 0 → −1)."""
    return to_signs((np.asarray(image_reps) + np.asarray(text_reps) + np.asarray(label_reps)) / 3)


def step_objective(
    step: str,
    reps: torch.Tensor,
    fixed: dict[str, torch.Tensor],
    labels: torch.Tensor,
    codes: torch.Tensor,
    config: MMACHConfig,
) -> dict[str, torch.Tensor]:
    """The part of Eq. 10 that one network's step minimises, on a minibatch.

    ``reps``: the trained network's representations of the batch (with gradients); ``fixed``: the other
    networks' representations of the same rows (``image`` and ``text`` for the label step, ``label`` for
    the others); ``labels`` and ``codes``: the batch's rows of the labels and of B. Returns the pair terms
    (``<pair_loss>_<modality>_label``: J^IL, J^TL or their MSE replacement), ``quantization`` (this
    network's share of Eq. 9), ``loss`` (pair terms + α·quantization) and, for the triplet loss, the
    number of ``triplets`` mined in the batch.
    """
    if step not in (*STEPS, WARMUP):
        raise ValueError(f"step must be one of {(*STEPS, WARMUP)}, got {step!r}")
    terms: dict[str, torch.Tensor] = {}
    if config.pair_loss == "triplet":
        triplets = mine_triplets(shared_label_counts(labels, labels))
        terms["triplets"] = torch.tensor(len(triplets))

        def pair(label_reps: torch.Tensor, modal_reps: torch.Tensor) -> torch.Tensor:
            return cross_modal_triplet_loss(label_reps, modal_reps, triplets, config.margin)

    else:
        similarity = label_cosine(labels, labels)

        def pair(label_reps: torch.Tensor, modal_reps: torch.Tensor) -> torch.Tensor:
            return mse_pair_loss(label_reps, modal_reps, similarity)

    name = config.pair_loss
    if step == WARMUP:
        terms[f"{name}_label_label"] = pair(reps, reps)
        terms["loss"] = terms[f"{name}_label_label"]
        return terms
    if step == "label":
        pairs = {f"{name}_{m}_label": pair(reps, fixed[m]) for m in MODALITIES}
        if config.label_self_loss:
            pairs[f"{name}_label_label"] = pair(reps, reps)
    else:
        pairs = {f"{name}_{step}_label": pair(fixed["label"], reps)}
    terms |= pairs
    terms["quantization"] = quantization_loss(codes, reps)
    terms["loss"] = sum(pairs.values()) + config.alpha * terms["quantization"]
    return terms


# -- training ------------------------------------------------------------------------------------------


def _check_inputs(
    image: np.ndarray, text: np.ndarray, labels: np.ndarray, config: MMACHConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image, text, labels = check_paired(image, text, labels)
    if len(image) < 2:
        raise ValueError(f"need at least 2 training items, got {len(image)}")
    if config.pair_loss == "triplet" and len(np.unique(labels, axis=0)) < 2:
        raise ValueError("every training item has the same labels: the triplet loss has nothing to order")
    return image, text, labels


def _full_pass(
    nets: MMACHNetworks, xs: dict[str, torch.Tensor], labels: torch.Tensor, reps: Sequence[str] = STEPS
) -> dict[str, torch.Tensor]:
    """Features and representations of every training item with the current networks, no gradients:
    ``image_features``, ``text_features`` (n, c), the representations named in ``reps`` (n, k) and, with
    ``label`` among them and the attention on, ``attention_image`` / ``attention_text`` (n,)."""

    def forward(rows: slice) -> dict[str, torch.Tensor]:
        parts: dict[str, torch.Tensor] = {}
        for m in MODALITIES:
            feature = nets[m].features(xs[m][rows])
            parts[f"{m}_features"] = feature
            if m in reps:
                parts[m] = torch.tanh(nets[m].hash(feature))
        if "label" in reps:
            parts["label"], a_il, a_tl = nets.label(labels[rows], parts["image_features"], parts["text_features"])
            if a_il is not None:
                parts |= {"attention_image": a_il, "attention_text": a_tl}
        return parts

    return deep.full_pass((nets[step] for step in STEPS), len(labels), forward)


def _run_step(
    step: str,
    nets: MMACHNetworks,
    optimizer: torch.optim.Optimizer,
    xs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    codes: torch.Tensor | None,
    config: MMACHConfig,
    rng: np.random.Generator,
    fixed: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One network's pass over the training set in deep.minibatches (Algorithm 1, steps 6–12 / 13–19 / 20–26),
    the other networks fixed: their outputs (``fixed``, computed here unless given) do not change during
    the step. Returns the mean of each term over the deep.minibatches."""
    if fixed is None:
        fixed = _full_pass(nets, xs, labels, ("label",) if step in MODALITIES else MODALITIES)
    net = nets["label" if step == WARMUP else step]
    net.train()
    sums: dict[str, float] = {}
    batches = 0
    for rows in deep.minibatches(rng, len(labels), config.batch_size, labels.device, even=True):
        batches += 1
        y = labels[rows]
        if step in ("label", WARMUP):
            reps, _, _ = net(y, fixed["image_features"][rows], fixed["text_features"][rows])
            others = {"image": fixed["image"][rows], "text": fixed["text"][rows]}
        else:
            reps = net(xs[step][rows])
            others = {"label": fixed["label"][rows]}
        terms = step_objective(step, reps, others, y, None if codes is None else codes[rows], config)
        deep.descend(optimizer, terms["loss"])
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    return {key: value / batches for key, value in sums.items()}


def _epoch_record(
    steps: dict[str, dict[str, float]],
    outputs: dict[str, torch.Tensor],
    old_codes: np.ndarray,
    new_codes: np.ndarray,
    config: MMACHConfig,
) -> dict:
    label = steps["label"]
    b = torch.as_tensor(new_codes, dtype=outputs["image"].dtype)
    record = {key: value for key, value in label.items() if key.startswith(f"{config.pair_loss}_")}
    record["objective"] = label["loss"]
    record |= {f"{step}_step": steps[step]["loss"] for step in STEPS}
    record["quantization"] = float(quantization_loss(b, outputs["image"], outputs["text"], outputs["label"]))
    record["bit_flips"] = int((new_codes != old_codes).sum())
    if "triplets" in label:
        record["triplets_per_batch"] = label["triplets"]
    if config.attention:
        record |= {k: float(outputs[k].mean()) for k in ("attention_image", "attention_text")}
    return record


def _hasher(nets: MMACHNetworks, config: MMACHConfig, seed: int, history: list[dict]) -> TrainedHasher:
    """The hasher as it stands: the image and text networks only (the LabelNet is training-only)."""
    return deep.frozen_hasher("mmach", nets, config, seed, history)


def train_mmach(
    image: Matrix, text: Matrix, labels: Matrix, config: MMACHConfig, seed: int = 0, monitor: Monitor | None = None
) -> TrainedHasher:
    """Train on paired rows of ``image`` and ``text`` features with their multi-hot ``labels``; the input
    is checked before any work starts. Seeded: the same seed and input give the same codes on CPU.

    The ``monitor``'s ``eval_fn`` runs after every epoch.
    """
    image, text, labels = _check_inputs(image, text, labels, config)
    rng = np.random.default_rng(seed)
    device = torch.device(config.device)
    xs, y = deep.paired_tensors(image, text, labels, device)
    history: list[dict] = []
    with deep.seeded_training(seed, config.torch_threads):
        nets = build_networks(image, text, labels.shape[1], config)
        for step in STEPS:
            nets[step].to(device)
        optimizers = {step: config.make_optimizer(nets[step]) for step in STEPS}
        for warmup in range(1, config.label_warmup_epochs + 1):
            terms = _run_step(WARMUP, nets, optimizers["label"], xs, y, None, config, rng)
            history.append({"stage": WARMUP, "epoch": warmup, "lr": config.lr} | terms)
        outputs = _full_pass(nets, xs, y)
        codes = unified_codes(*(outputs[m].cpu().numpy() for m in STEPS))

        def epoch(number: int) -> dict:
            """Algorithm 1: the LabelNet, the image network, the text network, then B (Eq. 7)."""
            nonlocal codes, outputs
            lr = config.learning_rate(number - 1)
            deep.set_learning_rate(optimizers.values(), lr)
            b = torch.as_tensor(codes, dtype=torch.float32, device=device)
            # the last full pass (networks unchanged since) gives the label step its fixed inputs
            steps = {"label": _run_step("label", nets, optimizers["label"], xs, y, b, config, rng, outputs)}
            steps |= {m: _run_step(m, nets, optimizers[m], xs, y, b, config, rng) for m in MODALITIES}
            outputs = _full_pass(nets, xs, y)
            new_codes = unified_codes(*(outputs[m].cpu().numpy() for m in STEPS))
            cpu = {k: v.cpu() for k, v in outputs.items()}
            record = deep.epoch_fields(number, lr) | _epoch_record(steps, cpu, codes, new_codes, config)
            codes = new_codes
            return record

        deep.run_epochs(
            "MMACH",
            config.epochs,
            epoch,
            lambda so_far: _hasher(nets, config, seed, so_far),
            history,
            monitor,
        )
    return _hasher(nets, config, seed, history)
