"""Contrastive instance hashing: codes that keep the item as well as its category.

The supervised methods of this project (DSFH, AMSH, DMSFH, MMACH) regress codes onto labels, so every
item of a category gets nearly the same code: on OpenClipart, hundreds of items tie at distance 0 with a
query's own pair (docs/methods/contrastive.md). Here each modality's hash function (an MLP on the
pretrained features, ``tanh`` output, sign at serving) is trained end to end with three terms:

- **instance**: a symmetric InfoNCE over the batch's image–text pairs, on the cosine of the relaxed codes
  (for ±1 codes, cosine = 1 − 2·Hamming / bits), with every pair of identical text as a positive too
  (OpenClipart repeats texts: they are not negatives);
- **label**: a linear classifier shared by both modalities reads the labels from the relaxed code
  (binary cross-entropy), keeping the category in the bits, as the seed methods do;
- **quantization**: ``(|h| − 1)²``, so the sign loses little of what the loss saw.

Text views (an item's title or one tag alone) are extra text rows paired with their item's image, so a
short query maps where its item's image is. The real-valued output (before the sign) is what the
index's asymmetric re-ranker scores candidates with (``index.rerank``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from index.codes import check_code_bits
from training.methods.base import MODALITIES, TextViews, TrainedHasher, check_features
from training.methods.deep import (
    Monitor,
    ScaledInputNet,
    check_torch_threads,
    descend,
    frozen_hasher,
    input_scaling,
    minibatches,
    run_epochs,
    seeded_training,
)


@dataclass(frozen=True)
class ContrastiveConfig:
    bits: int = 64
    hidden: int = 1024  # one hidden layer per modality; 0: a linear map
    dropout: float = 0.2
    input_dropout: float = 0.0  # features dropped at random while training: the only augmentation of fixed features
    epochs: int = 60
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05  # of the InfoNCE logits over code cosines
    label_weight: float = 1.0
    quantization_weight: float = 0.1
    view_weight: float = 0.5  # the image ↔ text-view InfoNCE, beside the image ↔ full-text one
    # > 0: the first head_bits bits are a semantic head (UDDH's idea, supervised here): the label term reads
    # them alone, and a cross-modal InfoNCE whose positives are the items sharing a label pulls them together;
    # the instance term still reads the whole code. 0: the label term reads the whole code.
    head_bits: int = 0
    semantic_weight: float = 1.0
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        check_code_bits(self.bits)
        if self.head_bits and check_code_bits(self.head_bits, "head_bits") >= self.bits:
            raise ValueError(f"head_bits must be a multiple of 8 below bits ({self.bits}), got {self.head_bits}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        check_torch_threads(self.torch_threads)


class ContrastiveHashNet(ScaledInputNet):
    """Scaled features → (hidden → ReLU → dropout →) bits → tanh: the relaxed code, whose sign is the code."""

    def __init__(
        self, shift: np.ndarray, scale: np.ndarray, hidden: int, bits: int, dropout: float, input_dropout: float
    ) -> None:
        super().__init__(shift, scale)
        dim = len(shift)
        layers: list[nn.Module] = [nn.Dropout(input_dropout)] if input_dropout else []
        layers += (
            [nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, bits)]
            if hidden
            else [nn.Linear(dim, bits)]
        )
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(self.scaled(x)))


def multi_positive_infonce(
    a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Symmetric InfoNCE between rows of ``a`` and ``b`` (cosine / temperature), where ``positives[i, j]``
    marks every pair that counts as a match (the diagonal at least): −log of the positives' share of
    each row's (and each column's) softmax mass."""
    logits = functional.normalize(a, dim=1) @ functional.normalize(b, dim=1).T / temperature
    masked = logits.masked_fill(~positives, float("-inf"))
    rows = torch.logsumexp(logits, dim=1) - torch.logsumexp(masked, dim=1)
    cols = torch.logsumexp(logits, dim=0) - torch.logsumexp(masked, dim=0)
    return (rows.mean() + cols.mean()) / 2


@dataclass(frozen=True)
class _ViewIndex:
    """Where each item's text views are: rows ``order[starts[i] : starts[i] + counts[i]]`` of the views."""

    order: np.ndarray
    starts: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, views: TextViews | None, n: int) -> _ViewIndex | None:
        if views is None or not len(views.item):
            return None
        counts = np.bincount(views.item, minlength=n)
        return cls(np.argsort(views.item, kind="stable"), np.concatenate(([0], np.cumsum(counts)[:-1])), counts)

    def pick(self, rng: np.random.Generator, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor] | None:
        """One random view of each batch item that has views: (positions in the batch, rows of the views)."""
        has = np.flatnonzero(self.counts[rows] > 0)
        if not len(has):
            return None
        offsets = (rng.random(len(has)) * self.counts[rows[has]]).astype(np.int64)
        return torch.from_numpy(has), torch.from_numpy(self.order[self.starts[rows[has]] + offsets])


@dataclass(frozen=True)
class Pairs:
    """Paired training rows: row i of ``image`` and of ``text`` are one item, ``labels`` its labels.
    ``groups``: items with the same group number have identical texts (positives for each other; None:
    only an item's own pair is); ``text_views``: short texts of the items, extra text rows."""

    image: np.ndarray
    text: np.ndarray
    labels: np.ndarray
    groups: np.ndarray | None = None
    text_views: TextViews | None = None


def train_contrastive(
    pairs: Pairs, config: ContrastiveConfig, seed: int = 0, monitor: Monitor | None = None
) -> TrainedHasher:
    """Train both hash functions on the pairs."""
    image, text, labels, groups, text_views = pairs.image, pairs.text, pairs.labels, pairs.groups, pairs.text_views
    image, text = check_features("image", image), check_features("text", text)
    n = len(image)
    labels = np.asarray(labels, dtype=np.float32)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    view_index = _ViewIndex.of(text_views, n)
    with seeded_training(seed, config.torch_threads):
        nets = {
            m: ContrastiveHashNet(
                *input_scaling(x, True), config.hidden, config.bits, config.dropout, config.input_dropout
            )
            for m, x in (("image", image), ("text", text))
        }
        head = config.head_bits or config.bits  # the bits the label term reads
        classifier = nn.Linear(head, labels.shape[1])
        parameters = [p for net in nets.values() for p in net.parameters()] + list(classifier.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, config.lr, total_steps=config.epochs * -(-n // config.batch_size), pct_start=0.1
        )
        xs = {"image": torch.from_numpy(image), "text": torch.from_numpy(text)}
        y = torch.from_numpy(labels)
        group_t = torch.from_numpy(groups)
        view_x = torch.from_numpy(check_features("text", text_views.features)) if view_index is not None else None

        def epoch(i: int) -> dict:
            for net in nets.values():
                net.train()
            totals = {"instance": 0.0, "label": 0.0, "semantic": 0.0, "quantization": 0.0, "views": 0.0}
            batches = 0
            for rows in minibatches(rng, n, config.batch_size, torch.device("cpu"), even=True):
                codes = {m: nets[m](xs[m][rows]) for m in MODALITIES}
                positives = group_t[rows][:, None] == group_t[rows][None, :]
                instance = multi_positive_infonce(codes["image"], codes["text"], positives, config.temperature)
                label = sum(
                    functional.binary_cross_entropy_with_logits(classifier(codes[m][:, :head]), y[rows])
                    for m in MODALITIES
                )
                semantic = torch.zeros(())
                if config.head_bits:
                    sharing = (y[rows] @ y[rows].T) > 0
                    semantic = multi_positive_infonce(
                        codes["image"][:, :head], codes["text"][:, :head], sharing, config.temperature
                    )
                quantization = sum(((codes[m].abs() - 1) ** 2).mean() for m in MODALITIES)
                loss = instance + config.label_weight * label + config.semantic_weight * semantic
                loss = loss + config.quantization_weight * quantization
                views = torch.zeros(())
                picked = view_index.pick(rng, rows.numpy()) if view_index is not None else None
                if picked is not None:
                    items, view_rows = picked
                    view_codes = nets["text"](view_x[view_rows])
                    image_codes = codes["image"][items]
                    same = group_t[rows][items]
                    views = multi_positive_infonce(
                        image_codes, view_codes, same[:, None] == same[None, :], config.temperature
                    )
                    views = views + functional.binary_cross_entropy_with_logits(
                        classifier(view_codes[:, :head]), y[rows][items]
                    )
                    loss = loss + config.view_weight * views
                descend(optimizer, loss)
                schedule.step()
                batches += 1
                for key, value in (("instance", instance), ("label", label), ("semantic", semantic),
                                   ("quantization", quantization), ("views", views)):  # fmt: skip
                    totals[key] += float(value.detach())
            record = {"epoch": i, "iteration": i} | {k: v / batches for k, v in totals.items()}
            record["objective"] = record["instance"] + config.label_weight * record["label"]
            return record

        def snapshot(history: list[dict]) -> TrainedHasher:
            return frozen_hasher("contrastive", nets, config, seed, history)

        history = run_epochs("contrastive", config.epochs, epoch, snapshot, [], monitor)
        return snapshot(history)
