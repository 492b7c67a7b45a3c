"""Model bundles made for the swap and tamper tests, from the committed default bundle.

``linear_bundle`` writes a valid bundle of another code length: the default bundle's featurizers and
vocabulary, new random linear hash functions as ONNX graphs, random centers, a manifest (the default's,
read as format 1 and written as the current format) whose sha256 list covers every file. The tampering
helpers break one thing each: a byte of an ONNX file (the sha256 no longer matches), or an ONNX graph
whose input shape disagrees with the manifest while the manifest's sha256 is recomputed to match (only
the shape check can catch it).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from index.bundle import MANIFEST, Manifest, read_manifest
from index.bundle.manifest import MODALITIES, SemanticIndex
from service.settings import DEFAULT_BUNDLE


def copy_bundle(destination: Path, source: Path = DEFAULT_BUNDLE) -> Path:
    shutil.copytree(source, destination)
    return destination


def linear_onnx(input_dim: int, bits: int, seed: int) -> bytes:
    """``features`` (batch, input_dim) float32 → ``codes`` (batch, bits) float64 = x · W, W random."""
    weights = np.random.default_rng(seed).normal(size=(input_dim, bits))
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["features"], ["x64"], to=TensorProto.DOUBLE),
            helper.make_node("MatMul", ["x64", "weights"], ["codes"]),
        ],
        "hash_function",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", input_dim])],
        [helper.make_tensor_value_info("codes", TensorProto.DOUBLE, ["batch", bits])],
        [numpy_helper.from_array(weights, name="weights")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_manifest(bundle: Path, manifest: Manifest) -> Manifest:
    (bundle / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    return manifest


def reseal(bundle: Path) -> Manifest:
    """Recompute the manifest's sha256 list: what an attacker who can write the whole directory does."""
    manifest = read_manifest(bundle)
    files = {name: hashlib.sha256((bundle / name).read_bytes()).hexdigest() for name in manifest.files}
    return write_manifest(bundle, manifest.model_copy(update={"files": files}))


def linear_bundle(destination: Path, bits: int = 32, n_centers: int = 8, seed: int = 0) -> Path:
    """A valid bundle with ``bits``-bit codes and the default bundle's featurizers."""
    bundle = copy_bundle(destination)
    manifest = read_manifest(bundle)
    for j, modality in enumerate(MODALITIES):
        spec = manifest.modalities.of(modality)
        (bundle / spec.onnx).write_bytes(linear_onnx(spec.input.dim, bits, seed + j))
    centers = np.where(np.random.default_rng(seed).random((n_centers, bits)) < 0.5, -1, 1).astype(np.int8)
    np.save(bundle / "centers.npy", centers, allow_pickle=False)
    head = SemanticIndex(head_bits=bits, centers="centers.npy", k=n_centers, source="test")
    update = {"method": "linear-test", "code_bits": bits, "semantic_index": head, "bundle_id": f"linear{bits}s{seed}"}
    write_manifest(bundle, manifest.model_copy(update=update))
    reseal(bundle)
    return bundle


def flip_byte(bundle: Path, name: str = "text.onnx") -> Path:
    """Change one byte in the middle of a file: its sha256 no longer matches the manifest."""
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    return bundle


def wrong_input_shape(bundle: Path, modality: str = "text") -> Path:
    """Replace a modality's hash function by a graph taking one feature fewer than the manifest says,
    and recompute the manifest's sha256 so that only the shape check stands in the way."""
    manifest = read_manifest(bundle)
    spec = manifest.modalities.of(modality)
    (bundle / spec.onnx).write_bytes(linear_onnx(spec.input.dim - 1, manifest.code_bits, 1))
    reseal(bundle)
    return bundle


def models_dir(root: Path) -> Path:
    """``root/models`` holding the default bundle (as ``default``) and a valid 32-bit one (``linear32``):
    what a service swaps between."""
    models = root / "models"
    models.mkdir()
    (models / "default").symlink_to(DEFAULT_BUNDLE)
    linear_bundle(models / "linear32", bits=32)
    return models


def permuted_bundle(destination: Path, seed: int = 0) -> Path:
    """The default bundle with the bits of its codes in another order, its centers alike: every code
    differs, every Hamming distance is the same, so retrieval is exactly as good (a bundle the quality
    gate must pass, whose re-encoded codes are checkably new)."""
    bundle = copy_bundle(destination)
    manifest = read_manifest(bundle)
    assert manifest.semantic_index.head_bits == manifest.code_bits, "the centers span the whole code"
    order = np.random.default_rng(seed).permutation(manifest.code_bits)
    for modality in MODALITIES:
        path = bundle / manifest.modalities.of(modality).onnx
        model = onnx.load(path)
        for node in model.graph.node:
            node.output[:] = ["unpermuted" if name == "codes" else name for name in node.output]
        model.graph.initializer.append(numpy_helper.from_array(order.astype(np.int64), name="bit_order"))
        model.graph.node.append(helper.make_node("Gather", ["unpermuted", "bit_order"], ["codes"], axis=1))
        onnx.checker.check_model(model)
        onnx.save(model, path)
    centers = np.load(bundle / "centers.npy", allow_pickle=False)
    np.save(bundle / "centers.npy", centers[:, order], allow_pickle=False)
    write_manifest(bundle, manifest.model_copy(update={"bundle_id": f"{manifest.bundle_id}p{seed}"}))
    reseal(bundle)
    return bundle
