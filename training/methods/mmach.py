"""MMACH — Multi-label Modality enhanced Attention based self-supervised deep Cross-modal Hashing (Zou, Wu,
Zhang, Bakker).

Every training item has three modalities: image I, text T and its multi-labels L. Encoders map them to
c-dimensional features F^E, G^E, H^E (Eq. 1). The label modality is sparse, so the multi-label modality
enhanced attention enriches it with the item's own image and text features (Eq. 2–3):

    a^IL = F^E/‖F^E‖ · H^E/‖H^E‖,   a^TL = G^E/‖G^E‖ · H^E/‖H^E‖,   H^A = H^E + a^IL F^E + a^TL G^E
    (here on the normalised features, see below).

Three hash networks give tanh-relaxed k-bit representations F^hr = f(F^E), G^hr = g(G^E) and
H^hr = h(H^A) (the LabelNet, Eq. 8). The multi-label cross-modal triplet loss (Eq. 4) asks, for an anchor
of one modality and two items of another, that the item sharing *more* labels with the anchor be closer
by a margin γ; J^IL (Eq. 5) and J^TL (Eq. 6) apply it between the label modality and the image / text
modality, both ways round. With the unified code B = sign((F^hr + G^hr + H^hr)/3) (Eq. 7) and the
quantisation loss (Eq. 9) the objective is J = J^IL + J^TL + α J_quantization (Eq. 10). Algorithm 1
alternates per epoch: θ^L (LabelNet) with θ^I, θ^T, B fixed; then θ^I; then θ^T; then B by Eq. 7.

Serving: the attention only enriches the *label* modality (H^A feeds h alone; f and g take F^E and G^E,
§3.1 and §3.5), so the image and text hash functions never see labels, and nothing of the attention or the
LabelNet is needed at query time. The exported hash function of a modality is its input scaling, encoder
and hash network (``ModalityNet``); the LabelNet is a separate training-only module, never exported.

Ablations (§5.4.2–3): ``attention=False`` sets H^A = H^E (MLSDCH); ``pair_loss="mse"`` replaces the
triplet terms of Eq. 5–6 by an MSE loss (MMACH-MSE).

Choices where the paper is vague, and why:

* Encoders. The paper's E_I is a pretrained ResNet34 and E_T, E_L the Universal Sentence Encoder (labels
  as text), fixed and "transferred". None is available offline and our inputs are already feature vectors
  (image: 416-d GIST-like floats; text: bag-of-words counts), so each encoder is one learned FC–ReLU layer
  (``encoder_dim`` = c) trained with its own modality's parameters: θ^I = {E_I, f}, θ^T = {E_T, g},
  θ^L = {E_L, h}. Pretraining MLP encoders on the same training labels first would add a second supervised
  model the paper does not have. ReLU outputs are non-negative like ResNet's pooled features, so every
  attention weight (a cosine) lies in [0, 1]: the image and text features are *added* to the label feature,
  never subtracted. A zero feature vector has attention 0 (its norm is clamped at 1e-12).
* Normalised fusion. Eq. 3 adds raw features, but §1 says the encoded features are normalised and "the
  normalized features from the original image and … text are fused into the normalized features" of the
  labels; so H^A = Ĥ^E + a^IL F̂^E + a^TL Ĝ^E with unit-norm rows (without the attention, H^A = Ĥ^E).
  Raw, our image features are several times longer than the label feature and swamp it. f and g take the
  raw F^E, G^E: feeding them the normalised features as well stalled training (validation mAP 0.27 / 0.22
  after 8 epochs, see the validation note below).
* Inputs. Image features are z-scored per dimension; text counts are divided by one global scale (their
  root mean square over the training matrix), so a sparse bag of words stays sparse. Both steps are
  buffers of the network, hence part of the exported graph (as in UDDH).
* Hash networks (§3.7). Image and text: c → ``hash_hidden`` → k, FC–ReLU layers then a linear output and
  tanh (paper: c → MS → 4096 → 512 → k, SSAH's TxtNet). SSAH's multi-scale (MS) block average-pools
  neighbouring input dimensions; our encoder outputs have no neighbourhood order, so it is left out.
  LabelNet: E_L, then c → ``label_hidden`` → k (paper: c → 8192 → k).
* Attention during training. The paper computes H^A once, from fixed encoders, before training
  (Algorithm 1, step 2). Here E_I and E_T learn, so H^A is recomputed from their current features at the
  start of every network's step; within a step the other networks are fixed (their features and
  representations are computed once for the whole training set, no gradients), which is exactly
  Algorithm 1's "keep the other parameters unchanged".
* Triplets. Eq. 4–6 take the anchor from one modality and both the positive and the negative from the
  other; §5.3's sentence ("a and b from the first modality, c from another") contradicts the equations, so
  the equations are followed. "More common categories" is taken literally: (a, p, n) is a triplet iff
  |y_a ∧ y_p| > |y_a ∧ y_n|. Algorithm 1 draws minibatches from precomputed triplet sets whose size it
  never states; here every such triplet inside a minibatch of items is used (``triplet_mask``), a's own
  paired item included (it shares all of a's labels). Items without labels are never anchors (nothing is
  ordered for them) but serve as negatives.
* Normalisation and margins. Eq. 10 divides each triplet sum by n_IL²·k, printed with the count squared,
  which would make the term vanish as the triplet count grows; we divide by (number of triplets)·k, i.e.
  the mean hinge per triplet and bit. The four margins γ1…γ4 are positive but their values are not given;
  one margin is used for all four, scaled with the code length: γ = ``margin``·k, so ``margin`` is the
  required gap in squared distance per bit (for binary codes ‖a − b‖² = 4·Hamming: margin·k/4 bits).
  ``margin`` = 0.1 was chosen on the validation split below (lr 1e-3, 4 epochs, 64 bits, i2t / t2i mAP: 1.0 →
  0.553 / 0.554, 0.25 → 0.597 / 0.609, 0.1 → 0.602 / 0.620, 0.03 → 0.583 / 0.626; 15 epochs: 0.25 →
  0.631 / 0.698, 0.1 → 0.644 / 0.729). Eq. 9's quantisation loss is Σ‖B − X^hr‖² / (3nk); a network
  step keeps its own term with the same 1/(3nk) weight (the other two are constants there), over its
  minibatch.
* The LabelNet's own term and warm-up (an addition, ``label_self_loss``, ``label_warmup_epochs``). Eq. 10
  trains the LabelNet only against the image and text representations. From untrained networks this
  co-adapts to codes that encode the labels poorly: on the validation split the label codes retrieved
  other training items' label codes at mAP 0.585 (a function of the labels alone can reach > 0.9), and
  the image / text codes at 0.534 / 0.536 validation mAP after 4 epochs. SSAH, which the paper builds its
  "self-supervised" LabelNet on, trains the LabelNet on label similarity of its own codes; so the label
  step adds J^LL, the same multi-label triplet loss with label anchors against label items (weight 1),
  and 3 warm-up epochs train the LabelNet on J^LL alone before Algorithm 1 starts. With both: label codes
  0.875, validation mAP 0.602 / 0.620 at the same 4 epochs. ``MMACHConfig.paper`` turns both off.
* Validation note. Every tuning number in these notes comes from a split of the OpenClipart *training*
  set (1,000 held-out training items as queries against the other 4,873; seed 123), never from the query
  set; on that split the shallow DSFH scores 0.670 / 0.800 mAP at 64 bits. The default learning rate
  came from the same split (20 epochs, 64 bits): 1e-3 → 0.646 / 0.758, 3e-3 → 0.653 / 0.766, 1e-2
  diverged in the first epoch (0.351 / 0.195 at the end).
* MSE ablation. The paper does not say what MMACH-MSE regresses. Here each triplet pair term of Eq. 5–6 is
  replaced by the mean squared error between the scaled inner product of the cross-modal representations,
  x_i·y_j / k ∈ [−1, 1], and the cosine similarity of the two label vectors ∈ [0, 1] (graded by the shared
  labels like the triplets): one term per modality pair, since the matrix is the same both ways round.
* Unified codes. B starts as Eq. 7 on the untrained networks' outputs and is updated by Eq. 7 at the end of
  every epoch (Algorithm 1 step 27). A zero maps to −1 (``index.codes``).
* Optimiser. The paper: SGD and back-propagation, 200 epochs, learning rate 10^−1.5 lowered "gradually" to
  1e-6, minibatches of 128, α = 0.6: ``MMACHConfig.paper`` (plain SGD, no momentum or weight decay, the
  rate lowered geometrically per epoch). The CPU default keeps α, the batch size, the alternation and the
  geometric decay, with Adam, smaller networks and fewer epochs (see ``MMACHConfig``). Each of the three
  networks has its own optimiser; all share the schedule (the warm-up runs at the first epoch's rate).
* History: first one record per warm-up epoch (``stage`` = "label_warmup": J^LL and the triplet count),
  which ``plot_history`` skips, then one record per epoch. The L-step sees every term of Eq. 10 (and J^LL)
  on its minibatches, so its means are the recorded pair terms and ``objective``; ``image_step`` /
  ``text_step`` are those steps' minibatch objectives, ``quantization`` is Eq. 9 on the whole training
  set after the B update, ``bit_flips`` how many bits of B changed; ``attention_image`` /
  ``attention_text`` (mean a^IL, a^TL over the training set) only with the attention on,
  ``triplets_per_batch`` only with the triplet loss. ``eval_fn``'s values (e.g. validation mAP both ways)
  are merged into the record.
* Parity. The encoders are ``TorchHashEncoder``: float64 copies of the modality networks, exported as
  traced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from index.codes import to_signs
from training.methods.base import MODALITIES, TrainedHasher, check_paired, evaluation_fields
from training.methods.torch_encoder import frozen_hasher, paired_tensors, torch_threads

_CHUNK = 2048  # rows per full-training-set forward pass
_EPS = 1e-12  # norm clamp of the attention's cosine
STEPS = ("label", "image", "text")  # Algorithm 1's order within an epoch
WARMUP = "label_warmup"  # the LabelNet alone on its own pair term, before the alternation
PAIR_LOSSES = ("triplet", "mse")
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class MMACHConfig:
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
    label_self_loss: bool = True  # the LabelNet's own pair term J^LL in the label step (module notes)
    label_warmup_epochs: int = 3  # LabelNet epochs on J^LL alone before the alternation (module notes)
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
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (self.lr > 0 and 0 < self.final_lr <= self.lr):
            raise ValueError(f"need 0 < final_lr ≤ lr, got lr={self.lr}, final_lr={self.final_lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0 or self.alpha < 0:
            raise ValueError("weight_decay and alpha must be non-negative")
        if not self.margin > 0:
            raise ValueError(f"margin must be positive (the paper's γ are positive margins), got {self.margin}")
        if self.encoder_dim < 1 or self.label_hidden < 1 or min(self.hash_hidden, default=1) < 1:
            raise ValueError("encoder_dim, label_hidden and hash_hidden sizes must be positive")
        for switch in ("attention", "label_self_loss"):
            if not isinstance(getattr(self, switch), bool):
                raise ValueError(f"{switch} must be true or false, got {getattr(self, switch)!r}")
        if self.pair_loss not in PAIR_LOSSES:
            raise ValueError(f"pair_loss must be one of {PAIR_LOSSES}, got {self.pair_loss!r}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be positive or None, got {self.torch_threads}")

    @classmethod
    def paper(cls, bits: int, **overrides) -> MMACHConfig:
        """The paper's settings (§3.7, §5.3, §5.4.1, Algorithm 1): 200 epochs of SGD, learning rate 10^−1.5
        lowered to 1e-6, batch 128, α = 0.6, c = 512, hash layers 4096–512, LabelNet 8192, and Eq. 10
        as printed (no LabelNet self term, no warm-up). The margins are not given: ``margin`` keeps its
        default."""
        settings = {
            "epochs": 200,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 10**-1.5,
            "final_lr": 1e-6,
            "momentum": 0.0,
            "weight_decay": 0.0,
            "alpha": 0.6,
            "encoder_dim": 512,
            "hash_hidden": (4096, 512),
            "label_hidden": 8192,
            "label_self_loss": False,
            "label_warmup_epochs": 0,
        }
        return cls(bits, **(settings | overrides))

    def learning_rate(self, epoch: int) -> float:
        """The rate of 0-based ``epoch``: lr at the first, final_lr at the last, geometric in between."""
        if self.epochs == 1:
            return self.lr
        return self.lr * (self.final_lr / self.lr) ** (epoch / (self.epochs - 1))


# -- networks ------------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers


def _hash_layers(fan_in: int, hidden: Sequence[int], bits: int) -> nn.Sequential:
    """FC–ReLU hidden layers and a linear output; tanh (Eq. 8) is applied by the caller."""
    sizes = (fan_in, *hidden)
    return nn.Sequential(*_mlp(sizes), nn.Linear(sizes[-1], bits))


class ModalityNet(nn.Module):
    """The image or text network: input scaling, encoder (E_I / E_T) and hash network (f / g).

    ``forward`` is the modality's hash function: float32 features → tanh representations (Eq. 8), in the
    module's dtype. It takes the modality's features only.
    """

    def __init__(self, shift: np.ndarray, scale: np.ndarray, config: MMACHConfig) -> None:
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale, dtype=torch.float32))
        self.encoder = nn.Sequential(nn.Linear(len(shift), config.encoder_dim), nn.ReLU())
        self.hash = _hash_layers(config.encoder_dim, config.hash_hidden, config.bits)

    @property
    def input_dim(self) -> int:
        return self.shift.shape[0]

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.shift.dtype) - self.shift) * self.inv_scale

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's feature F^E or G^E."""
        return self.encoder(self.scaled(x))

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder feature F^E or G^E, tanh hash representation)."""
        feature = self.features(x)
        return feature, torch.tanh(self.hash(feature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)[1]


def attention_weights(modal_features: torch.Tensor, label_features: torch.Tensor) -> torch.Tensor:
    """Eq. 2, per row: the cosine of a modality's feature and the label feature, (n,)."""
    return (F.normalize(modal_features, dim=1, eps=_EPS) * F.normalize(label_features, dim=1, eps=_EPS)).sum(1)


def enhance_labels(
    label_features: torch.Tensor, image_features: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 2–3 on L2-normalised features (module notes), for rows of the same items:
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


def _input_scaling(x: np.ndarray, per_dimension: bool) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale): z-scores per dimension (image) or one global RMS scale (text); see module notes."""
    if per_dimension:
        std = x.std(axis=0)
        return x.mean(axis=0), np.where(std > 1e-8 * std.max(), std, 1.0)  # constant columns pass through
    return np.zeros(x.shape[1]), np.full(x.shape[1], np.sqrt(np.mean(x * x)))


def build_networks(image: np.ndarray, text: np.ndarray, n_labels: int, config: MMACHConfig) -> MMACHNetworks:
    """Fresh networks (from torch's current seed), the input scalings fitted on the training features."""
    return MMACHNetworks(
        image=ModalityNet(*_input_scaling(image, True), config),
        text=ModalityNet(*_input_scaling(text, False), config),
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
    """MMACH-MSE's pair term: mean over all pairs of (x_i·y_j / k − s_ij)² (module notes)."""
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
    out: dict[str, list[torch.Tensor]] = {}
    for net in (nets.image, nets.text, nets.label):
        net.eval()
    with torch.no_grad():
        for start in range(0, len(labels), _CHUNK):
            rows = slice(start, start + _CHUNK)
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
            for key, value in parts.items():
                out.setdefault(key, []).append(value)
    return {key: torch.cat(value) for key, value in out.items()}


def _make_optimizer(net: nn.Module, config: MMACHConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


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
    """One network's pass over the training set in minibatches (Algorithm 1, steps 6–12 / 13–19 / 20–26),
    the other networks fixed: their outputs (``fixed``, computed here unless given) do not change during
    the step. Returns the mean of each term over the minibatches."""
    if fixed is None:
        fixed = _full_pass(nets, xs, labels, ("label",) if step in MODALITIES else MODALITIES)
    net = nets["label" if step == WARMUP else step]
    net.train()
    n = len(labels)
    batches = np.array_split(rng.permutation(n), math.ceil(n / config.batch_size))
    sums: dict[str, float] = {}
    for batch in batches:
        rows = torch.from_numpy(batch).to(labels.device)
        y = labels[rows]
        if step in ("label", WARMUP):
            reps, _, _ = net(y, fixed["image_features"][rows], fixed["text_features"][rows])
            others = {"image": fixed["image"][rows], "text": fixed["text"][rows]}
        else:
            reps = net(xs[step][rows])
            others = {"label": fixed["label"][rows]}
        terms = step_objective(step, reps, others, y, None if codes is None else codes[rows], config)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach())
    return {key: value / len(batches) for key, value in sums.items()}


def _epoch_record(
    epoch: int,
    lr: float,
    steps: dict[str, dict[str, float]],
    outputs: dict[str, torch.Tensor],
    old_codes: np.ndarray,
    new_codes: np.ndarray,
    config: MMACHConfig,
) -> dict:
    label = steps["label"]
    b = torch.as_tensor(new_codes, dtype=outputs["image"].dtype)
    record: dict = {"epoch": epoch, "iteration": epoch, "lr": lr}
    record |= {key: value for key, value in label.items() if key.startswith(f"{config.pair_loss}_")}
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
    return frozen_hasher("mmach", nets, config, seed, history)


def train_mmach(
    image: np.ndarray,
    text: np.ndarray,
    labels: np.ndarray,
    config: MMACHConfig,
    seed: int = 0,
    progress: bool = False,
    eval_fn: Callable[[TrainedHasher], dict[str, float] | float] | None = None,
) -> TrainedHasher:
    """Train on paired rows of ``image`` and ``text`` features with their multi-hot ``labels``; the input
    is checked before any work starts. Seeded: the same seed and input give the same codes on CPU.

    ``eval_fn`` is called on the current hasher after every epoch; its values (a dict, or a float stored as
    ``eval``) land in ``history``. ``progress`` shows a tqdm bar with the objective and those values.
    """
    image, text, labels = _check_inputs(image, text, labels, config)
    rng = np.random.default_rng(seed)
    device = torch.device(config.device)
    xs, y = paired_tensors(image, text, labels, device)
    history: list[dict] = []
    with torch.random.fork_rng(devices=[]), torch_threads(config.torch_threads):
        torch.manual_seed(seed)
        nets = build_networks(image, text, labels.shape[1], config)
        for step in STEPS:
            nets[step].to(device)
        optimizers = {step: _make_optimizer(nets[step], config) for step in STEPS}
        for warmup in range(1, config.label_warmup_epochs + 1):
            terms = _run_step(WARMUP, nets, optimizers["label"], xs, y, None, config, rng)
            history.append({"stage": WARMUP, "epoch": warmup, "lr": config.lr} | terms)
        outputs = _full_pass(nets, xs, y)
        codes = unified_codes(*(outputs[m].cpu().numpy() for m in STEPS))
        bar = tqdm(range(config.epochs), desc="MMACH", disable=not progress)
        for epoch in bar:
            lr = config.learning_rate(epoch)
            for optimizer in optimizers.values():
                for group in optimizer.param_groups:
                    group["lr"] = lr
            b = torch.as_tensor(codes, dtype=torch.float32, device=device)
            # the last full pass (networks unchanged since) gives the label step its fixed inputs
            steps = {"label": _run_step("label", nets, optimizers["label"], xs, y, b, config, rng, outputs)}
            steps |= {m: _run_step(m, nets, optimizers[m], xs, y, b, config, rng) for m in MODALITIES}
            outputs = _full_pass(nets, xs, y)
            new_codes = unified_codes(*(outputs[m].cpu().numpy() for m in STEPS))
            cpu = {k: v.cpu() for k, v in outputs.items()}
            record = _epoch_record(epoch + 1, lr, steps, cpu, codes, new_codes, config)
            codes = new_codes
            if eval_fn is not None:
                record |= evaluation_fields(eval_fn(_hasher(nets, config, seed, [*history, record])))
            history.append(record)
            shown = ("objective", "val_map_i2t", "val_map_t2i", "eval")
            bar.set_postfix({k: f"{record[k]:.4g}" for k in shown if k in record})
    return _hasher(nets, config, seed, history)
