"""What the deep trainers (UDDH, DMSFH, MMACH) share: a modality's hash function defined by a torch
network, frozen for serving and exported to ONNX, and the intra-op thread setting while training.

Training runs in float32; the frozen copy is float64 and first rounds its input to float32, exactly
like the exported graph (float32 ``features`` cast to double), so onnxruntime and torch agree to
~1e-15, far below the smallest |code| a sign could flip on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from index.bundle.manifest import INPUT_NAME, OUTPUT_NAME
from training.bundle.onnx_graphs import OPSET, hash_function_graph
from training.methods.base import MODALITIES, TrainedHasher

_CHUNK = 2048  # rows per forward pass when encoding a whole matrix


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
            blocks = [self.net(torch.from_numpy(x[s : s + _CHUNK])) for s in range(0, len(x), _CHUNK)]
        return torch.cat(blocks).numpy() if blocks else np.zeros((0, self.bits))


@hash_function_graph.register
def _torch_graph(encoder: TorchHashEncoder) -> onnx.ModelProto:
    """The traced float64 network: ``features`` float32 (batch, d) → ``codes`` float64 (batch, bits)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is asked for on purpose
        torch.onnx.export(
            encoder.net,
            (torch.zeros(1, encoder.input_dim, dtype=torch.float32),),
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
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: torch's setting), then restore the caller's."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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
