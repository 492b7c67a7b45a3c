"""DSFH head, instance tail: a code whose first bits carry the category and whose last bits carry the item.

UDDH's dual code (a semantic head plus tail bits) with a supervised head: the head is DSFH's code (the
label-fusion objective keeps the category: today's default), the tail is contrastive instance hashing's
code (``training.methods.contrastive``: InfoNCE over pairs, identical texts as positives). Ranked by
Hamming distance over both, an item of another category is kept away by the head, and inside the
query's category the tail orders items; the asymmetric re-ranker then scores the candidates with the
query's real code, in which the head weighs ``head_weight`` (its real outputs scaled to unit spread
and squashed by tanh, like the tail's). Trained one after the other, each by its own method; exported
as one torch module per modality (the kernel map written in torch), so a bundle has one hash function
per modality as always. docs/methods/dsfh_instance.md has the measurements behind the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from index.codes import check_code_bits
from training.methods.base import MODALITIES, TrainedHasher
from training.methods.contrastive import ContrastiveConfig, ContrastiveHashNet, Pairs, train_contrastive
from training.methods.deep import Monitor, TorchHashEncoder
from training.methods.dsfh import DSFHConfig, train_dsfh
from training.methods.kernel import KernelHashFunction


@dataclass(frozen=True)
class DSFHInstanceConfig:
    bits: int = 128
    head_bits: int = 64  # DSFH's share; the rest is the contrastive tail
    head_weight: float = 0.3  # the head's weight in the re-ranker's score (the tail's is 1)
    dsfh: dict = field(default_factory=dict)  # DSFHConfig overrides
    contrastive: dict = field(default_factory=dict)  # ContrastiveConfig overrides

    def __post_init__(self) -> None:
        check_code_bits(self.bits)
        if check_code_bits(self.head_bits, "head_bits") >= self.bits:
            raise ValueError(f"head_bits must be a multiple of 8 below bits ({self.bits}), got {self.head_bits}")
        if self.head_weight <= 0:
            raise ValueError(f"head_weight must be positive, got {self.head_weight}")


class KernelHead(nn.Module):
    """DSFH's hash function ``φ(x) P + b`` in float64 torch, squashed to ``w · tanh(real / spread)``: the
    same signs, on the tail's scale."""

    def __init__(self, encoder: KernelHashFunction, spread: np.ndarray, weight: float) -> None:
        super().__init__()
        kernel = encoder.kernel
        self.register_buffer("anchors_t", torch.as_tensor(kernel.anchors.T, dtype=torch.float64))
        self.register_buffer("anchor_sq", torch.as_tensor((kernel.anchors**2).sum(1), dtype=torch.float64))
        self.register_buffer("projection", torch.as_tensor(encoder.projection, dtype=torch.float64))
        self.register_buffer("bias", torch.as_tensor(encoder.bias, dtype=torch.float64))
        self.register_buffer("inv_spread", torch.as_tensor(1.0 / spread, dtype=torch.float64))
        self.minus_two_sigma_sq = -2.0 * kernel.sigma**2
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        d2 = torch.clamp((x * x).sum(1, keepdim=True) - 2.0 * (x @ self.anchors_t) + self.anchor_sq, min=0.0)
        real = torch.exp(d2 / self.minus_two_sigma_sq) @ self.projection + self.bias
        return self.weight * torch.tanh(real * self.inv_spread)


class HeadTailNet(nn.Module):
    """The two codes side by side: ``[head(x) | tail(x)]``."""

    def __init__(self, head: KernelHead, tail: ContrastiveHashNet) -> None:
        super().__init__()
        self.head, self.tail = head, tail

    @property
    def input_dim(self) -> int:
        return self.tail.input_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.head(x), self.tail(x).to(torch.float64)], dim=1)


def train_dsfh_instance(
    pairs: Pairs, config: DSFHInstanceConfig, seed: int = 0, monitor: Monitor | None = None
) -> TrainedHasher:
    """DSFH at ``head_bits``, then the contrastive tail at ``bits − head_bits``, joined per modality."""
    image, text = pairs.image, pairs.text
    head_config = DSFHConfig(**({"bits": config.head_bits} | config.dsfh))
    head = train_dsfh(image, text, pairs.labels, head_config, seed=seed, text_views=pairs.text_views)
    tail_config = ContrastiveConfig(**({"bits": config.bits - config.head_bits} | config.contrastive))
    tail = train_contrastive(pairs, tail_config, seed, monitor)
    features = {"image": image, "text": text}
    encoders = {}
    for m in MODALITIES:
        spread = head.encoders[m].real_codes(features[m]).std(axis=0)
        kernel_head = KernelHead(head.encoders[m], np.where(spread > 0, spread, 1.0), config.head_weight)
        net = HeadTailNet(kernel_head, tail.encoders[m].net)
        encoders[m] = TorchHashEncoder.freeze(net, net.input_dim, config.bits)
    history = [{"part": "dsfh"} | r for r in head.history] + [{"part": "contrastive"} | r for r in tail.history]
    return TrainedHasher(
        method="dsfh-instance",
        bits=config.bits,
        encoders=encoders,
        config={
            "bits": config.bits,
            "head_bits": config.head_bits,
            "head_weight": config.head_weight,
            "dsfh": head.config,
            "contrastive": tail.config,
            "seed": seed,
        },
        history=history,
    )
