"""The deep-trainer layer: what UDDH, DMSFH and MMACH share, so each method module holds only its model.

Training side: the MLP builder, the input scaling every network starts with (a buffer, hence part of
the exported graph), the geometric learning-rate schedule and the optimizer factory, seeded and
thread-limited training, shuffled minibatches, the no-gradient pass over a whole training matrix and
the epoch loop with its progress bar and evaluation hook.

Serving side: a modality's hash function defined by a torch network (``TorchHashEncoder``), frozen for
serving and exported to ONNX. Training runs in float32; the frozen copy is float64 and first rounds its
input to float32, exactly like the exported graph, so onnxruntime and torch agree to ~1e-15.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from training.methods.base import MODALITIES, TrainedHasher, evaluation_fields
from training.methods.onnx_model import OPSET

Matrix = np.ndarray  # a feature or label matrix, one row per item
CHUNK = 2048  # rows per forward pass when a whole matrix goes through a network
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True, eq=False)
class TorchHashEncoder:
    """``net(float32 (n, input_dim)) → (n, bits)`` real codes, float64 on CPU, gradients off."""

    net: nn.Module
    input_dim: int
    bits: int

    @classmethod
    def freeze(cls, net: nn.Module, input_dim: int, bits: int, drop: Sequence[str] = ()) -> TorchHashEncoder:
        """A float64 CPU copy of ``net``; the submodules named in ``drop`` (training-only parts such as a
        decoder or a label head) are removed so they are neither kept nor exported."""
        frozen = copy.deepcopy(net).cpu().double().eval()
        for name in drop:
            setattr(frozen, name, None)
        frozen.requires_grad_(False)
        return cls(frozen, input_dim, bits)

    def real_codes(self, x: np.ndarray) -> np.ndarray:
        """(n, input_dim) → (n, bits) float64; the input is rounded to float32 as the ONNX graph takes it."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"expected features of shape (n, {self.input_dim}), got {x.shape}")
        with torch.no_grad():
            blocks = [self.net(torch.from_numpy(x[s : s + CHUNK])) for s in range(0, len(x), CHUNK)]
        return torch.cat(blocks).numpy() if blocks else np.zeros((0, self.bits))

    def onnx_graph(self) -> onnx.ModelProto:
        """The traced float64 network: ``features`` float32 (batch, d) → ``codes`` float64 (batch, bits)."""
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is asked for on purpose
            torch.onnx.export(
                self.net,
                (torch.zeros(1, self.input_dim, dtype=torch.float32),),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
        model = onnx.load_from_string(buffer.getvalue())
        onnx.checker.check_model(model)
        return model


@contextlib.contextmanager
def seeded_training(seed: int, threads: int | None) -> Iterator[None]:
    """Torch's global generator seeded with ``seed`` and ``threads`` intra-op threads (None: torch's
    setting) inside the block; the caller's generator state and thread count are restored after it."""
    previous = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def check_torch_threads(threads: int | None) -> None:
    """Minibatch products gain little from more threads on shared cores, so the configs default to 1."""
    if threads is not None and threads < 1:
        raise ValueError(f"torch_threads must be positive or None, got {threads}")


def frozen_hasher(
    method: str,
    nets: Mapping[str, nn.Module],
    config,
    seed: int,
    history: Sequence[dict],
    drop: Sequence[str] = (),
    **head,
) -> TrainedHasher:
    """The hasher as training left it: each modality's network frozen (float64, CPU) without the
    training-only submodules named in ``drop``, with the (dataclass) config and seed it was trained
    with; ``head`` carries a learned semantic-index head (``head_bits``, ``centers``)."""
    return TrainedHasher(
        method=method,
        bits=config.bits,
        encoders={m: TorchHashEncoder.freeze(nets[m], nets[m].input_dim, config.bits, drop=drop) for m in MODALITIES},
        config=dataclasses.asdict(config) | {"seed": seed},
        history=list(history),
        **head,
    )


def paired_tensors(
    image: np.ndarray, text: np.ndarray, labels: np.ndarray, device: torch.device
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A supervised trainer's inputs on its device, float32: the features per modality and the labels."""
    features = {"image": image, "text": text}
    xs = {m: torch.as_tensor(features[m], dtype=torch.float32, device=device) for m in MODALITIES}
    return xs, torch.as_tensor(labels, dtype=torch.float32, device=device)


# -- networks -----------------------------------------------------------------------------------------------


def mlp(sizes: Sequence[int]) -> list[nn.Module]:
    """FC–ReLU layers from ``sizes[0]`` through each following size."""
    layers: list[nn.Module] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return layers


def input_scaling(x: np.ndarray, per_dimension: bool) -> tuple[np.ndarray, np.ndarray]:
    """(shift, scale) fitted on training features: z-scores per dimension (image descriptors; constant
    columns pass through), or one global RMS scale (bags of words: the input stays sparse and non-negative,
    and a rare word is not blown up by a tiny per-word deviation)."""
    if per_dimension:
        std = x.std(axis=0)
        return x.mean(axis=0), np.where(std > 1e-8 * std.max(), std, 1.0)
    return np.zeros(x.shape[1]), np.full(x.shape[1], np.sqrt(np.mean(x * x)))


class ScaledInputNet(nn.Module):
    """Base of every deep network: its input scaling as buffers, so the exported graph scales too."""

    def __init__(self, shift: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale, dtype=torch.float32))

    @property
    def input_dim(self) -> int:
        return self.shift.shape[0]

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 features (or the module's dtype) → (x − shift) / scale in the module's dtype."""
        return (x.to(self.shift.dtype) - self.shift) * self.inv_scale


# -- optimisation -------------------------------------------------------------------------------------------


def make_optimizer(
    parameters: Iterable[nn.Parameter],
    kind: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam (β = 0.9, 0.999) or plain/momentum SGD; ``fused`` selects torch's fused Adam kernel."""
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, fused=fused)


class GeometricSchedule:
    """Mixin of the DMSFH and MMACH configs, which both papers train with a rate "gradually lowered" from
    ``lr`` to ``final_lr`` over ``epochs``: geometric per epoch. The config also names its ``optimizer``
    (one of ``OPTIMIZERS``), ``momentum`` (SGD only) and ``weight_decay``."""

    epochs: int
    lr: float
    final_lr: float
    optimizer: str
    momentum: float
    weight_decay: float

    def check_schedule(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (self.lr > 0 and 0 < self.final_lr <= self.lr):
            raise ValueError(
                f"learning rates must be positive and falling: need 0 < final_lr ≤ lr, got lr={self.lr}, "
                f"final_lr={self.final_lr}"
            )
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")

    def learning_rate(self, epoch: int) -> float:
        """The rate of 0-based ``epoch``: lr at the first, final_lr at the last, geometric in between."""
        if self.epochs == 1:
            return self.lr
        return self.lr * (self.final_lr / self.lr) ** (epoch / (self.epochs - 1))

    def make_optimizer(self, net: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(net.parameters(), self.optimizer, self.lr, self.weight_decay, self.momentum)


# The optimisation both DMSFH and MMACH print (DCMH's): plain SGD on minibatches of 128, the rate lowered
# from 10^−1.5 to 1e-6; their ``paper`` presets start from it.
PAPER_SGD = {
    "batch_size": 128,
    "optimizer": "sgd",
    "lr": 10**-1.5,
    "final_lr": 1e-6,
    "momentum": 0.0,
    "weight_decay": 0.0,
}


def epoch_fields(epoch: int, lr: float) -> dict:
    """The first fields of a geometric-schedule trainer's history record (``iteration`` is what plots read)."""
    return {"epoch": epoch, "iteration": epoch, "lr": lr}


def set_learning_rate(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr


def minibatches(
    rng: np.random.Generator, n: int, batch_size: int, device: torch.device, even: bool = False
) -> Iterator[torch.Tensor]:
    """One epoch's shuffled row indices: batches of ``batch_size`` and a shorter last one, or with ``even``
    ⌈n / batch_size⌉ batches of near-equal size (no tiny last batch, for losses mined inside a batch)."""
    order = rng.permutation(n)
    if even:
        for batch in np.array_split(order, math.ceil(n / batch_size)):
            yield torch.from_numpy(batch).to(device)
        return
    rows = torch.from_numpy(order).to(device)
    for start in range(0, n, batch_size):
        yield rows[start : start + batch_size]


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimizer step on ``loss``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def full_pass(
    nets: Iterable[nn.Module], n: int, forward: Callable[[slice], Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """``forward`` over the rows [0, n) in blocks of ``CHUNK``, without gradients and with ``nets`` in eval
    mode (their modes restored after); each output is concatenated over the blocks."""
    nets = list(nets)
    modes = [net.training for net in nets]
    for net in nets:
        net.eval()
    out: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for start in range(0, n, CHUNK):
            for key, value in forward(slice(start, start + CHUNK)).items():
                out.setdefault(key, []).append(value)
    for net, mode in zip(nets, modes, strict=True):
        net.train(mode)
    return {key: torch.cat(value) for key, value in out.items()}


@dataclass(frozen=True)
class Monitor:
    """How a deep trainer reports while it runs: ``progress`` shows a tqdm bar with the objective and the
    evaluation; ``eval_fn`` (e.g. validation mAP both ways) is called on the hasher as it stands and its
    values (a dict, or a float stored as ``eval``) land in that epoch's history record. Monitoring only:
    nothing is selected on it."""

    progress: bool = False
    eval_fn: Callable[[TrainedHasher], dict[str, float] | float] | None = None


def run_epochs(
    name: str,
    epochs: int,
    epoch: Callable[[int], dict],
    snapshot: Callable[[list[dict]], TrainedHasher],
    history: list[dict],
    monitor: Monitor | None,
    eval_every: int = 1,
) -> list[dict]:
    """The outer loop of every deep trainer: ``epoch(i)`` (1-based) trains and returns its history record,
    appended to ``history``; every ``eval_every`` epochs and after the last, the monitor's ``eval_fn`` runs
    on ``snapshot`` (the hasher as it stands, given the history so far)."""
    monitor = monitor or Monitor()
    bar = tqdm(range(1, epochs + 1), desc=name, disable=not monitor.progress)
    for i in bar:
        record = epoch(i)
        if monitor.eval_fn is not None and (i % eval_every == 0 or i == epochs):
            record |= evaluation_fields(monitor.eval_fn(snapshot([*history, record])))
        history.append(record)
        shown = {k: v for k, v in record.items() if k == "objective" or k.startswith(("val", "eval"))}
        bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
    return history
