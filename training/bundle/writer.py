"""Write a trained hasher, its featurizers and what serving needs as one bundle directory."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from training.bundle.format import FORMAT_VERSION, MANIFEST
from training.bundle.onnx_graphs import hash_function_graph
from training.featurize.pipeline import FeatureSet
from training.methods.base import MODALITIES, TrainedHasher


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_fingerprint(features: FeatureSet) -> str:
    """sha256 over the training part's features and labels: which data a model was fitted on."""
    digest = hashlib.sha256()
    for array in features.part("train"):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _featurizers(features: FeatureSet) -> dict[str, dict]:
    image: dict = {"kind": "precomputed"}
    if features.image_featurizer is not None:
        image = {
            "kind": "gist-gabor-color",
            "onnx": "image_featurizer.onnx",
            "params": features.image_featurizer.params.to_json(),
            "preprocess": "alpha composited on white, aspect-preserving fit into size×size, centred",
        }
    text: dict = {"kind": "precomputed"}
    if features.text_featurizer is not None:
        text = {"kind": "bag-of-words", **features.text_featurizer.to_json()}
    return {"image": image, "text": text}


def write_bundle(
    out: Path,
    hasher: TrainedHasher,
    features: FeatureSet,
    metrics: dict,
    centers: np.ndarray | None = None,
    head_bits: int | None = None,
) -> dict:
    """Write the bundle atomically (temporary directory, then rename) and return its manifest.

    ``centers`` (k, head_bits) ±1 and ``head_bits`` describe a semantic-index head code made of the
    first ``head_bits`` bits of every code (UDDH's shared code); other methods leave them out.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        featurizers = _featurizers(features)
        modalities = {}
        dims = {"image": features.image.shape[1], "text": features.text.shape[1]}
        for modality in MODALITIES:
            encoder = hasher.encoders[modality]
            if encoder.input_dim != dims[modality]:
                raise ValueError(
                    f"{modality} encoder takes {encoder.input_dim} features, data has {dims[modality]}"
                )
            (staging / f"{modality}.onnx").write_bytes(hash_function_graph(encoder).SerializeToString())
            modalities[modality] = {
                "onnx": f"{modality}.onnx",
                "input": {"kind": "features", "dim": dims[modality]},
                "featurizer": featurizers[modality],
            }
        if features.image_featurizer is not None:
            (staging / "image_featurizer.onnx").write_bytes(features.image_featurizer.onnx_bytes)
        semantic_index = None
        if centers is not None:
            if head_bits is None or centers.shape[1] != head_bits or head_bits > hasher.bits:
                raise ValueError("centers need head_bits equal to their width and at most the code length")
            np.save(staging / "centers.npy", np.asarray(centers, dtype=np.int8), allow_pickle=False)
            semantic_index = {"head_bits": [0, head_bits], "centers": "centers.npy", "k": len(centers)}
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        bundle_id = hashlib.sha256(json.dumps([hasher.method, hasher.bits, files]).encode()).hexdigest()[:12]
        manifest = {
            "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id,
            "method": hasher.method,
            "code_bits": hasher.bits,
            "sign_rule": "bit = 1 iff code > 0",
            "bit_order": "bit j in byte j // 8 at position j % 8 (FAISS binary layout)",
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "modalities": modalities,
            "semantic_index": semantic_index,
            "training": {
                "dataset": features.dataset,
                "fingerprint": training_fingerprint(features),
                "items": len(features.split.train),
                "config": hasher.config,
                "history": hasher.history,
            },
            "metrics": metrics,
            "files": files,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=float))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
