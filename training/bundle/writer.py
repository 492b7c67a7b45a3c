"""Write a trained hasher, its featurizers and what serving needs as one bundle directory."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import JsonValue

from index.bundle.manifest import (
    MANIFEST,
    MODALITIES,
    EfficientNetLite0Spec,
    FeaturesInput,
    ImageDescriptorSpec,
    ImageFeaturizerSpec,
    Manifest,
    MiniLMSpec,
    Modalities,
    Precomputed,
    Reranker,
    SemanticIndex,
    TextFeaturizerSpec,
    TrainingInfo,
)
from index.bundle.pretrained import MAX_TOKENS
from index.centers import fit_centers
from index.codes import to_signs
from training.featurize.pipeline import FeatureSet
from training.featurize.pretrained import PretrainedImage, PretrainedText
from training.methods.base import TrainedHasher

IMAGE_FEATURIZER_FILE = "image_featurizer.onnx"
# The pretrained featurizers' files: git-ignored in models/, built by deploy/bootstrap.sh, checked by sha256.
IMAGE_PRETRAINED_FILE = "featurizer_efficientnet_lite0.onnx"
TEXT_PRETRAINED_FILE = "featurizer_minilm_l6_v2.int8.onnx"
TOKENIZER_FILE = "featurizer_minilm_tokenizer.json"
# Fitted centers: while fitting, no center takes more than this share over the mean (index.centers).
BUCKET_BALANCE = 1.5
# Every bundle written declares the asymmetric re-ranker: ties are broken by a real score, never by storage order.
DEFAULT_RERANKER = Reranker()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def training_fingerprint(features: FeatureSet) -> str:
    """sha256 over the training part's features and labels: which data a model was fitted on."""
    digest = hashlib.sha256()
    for array in features.part("train"):
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _featurizers(features: FeatureSet) -> tuple[ImageFeaturizerSpec, TextFeaturizerSpec, dict[str, Path]]:
    """The manifest entries of both featurizers and the pretrained files the bundle must carry."""
    image: ImageFeaturizerSpec = Precomputed()
    text: TextFeaturizerSpec = Precomputed()
    carried: dict[str, Path] = {}
    if isinstance(features.image_featurizer, PretrainedImage):
        image = EfficientNetLite0Spec(onnx=IMAGE_PRETRAINED_FILE, input_size=features.image_featurizer.encoder.size)
        carried[IMAGE_PRETRAINED_FILE] = features.image_featurizer.graph
    elif features.image_featurizer is not None:
        image = ImageDescriptorSpec(onnx=IMAGE_FEATURIZER_FILE, params=features.image_featurizer.params)
    if isinstance(features.text_featurizer, PretrainedText):
        text = MiniLMSpec(onnx=TEXT_PRETRAINED_FILE, tokenizer=TOKENIZER_FILE, max_tokens=MAX_TOKENS)
        carried |= {
            TEXT_PRETRAINED_FILE: features.text_featurizer.graph,
            TOKENIZER_FILE: features.text_featurizer.tokenizer,
        }
    elif features.text_featurizer is not None:
        text = features.text_featurizer.spec()
    return image, text, carried


def _carry(source: Path, target: Path) -> None:
    """Hard-link a featurizer file into the bundle (tens of MB; the same bytes), copying across devices."""
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def _json_values(value: object) -> JsonValue:
    """Trainer configs, histories and metrics as plain JSON (numpy scalars become numbers)."""
    return json.loads(json.dumps(value, default=float))


def _semantic_index(hasher: TrainedHasher, features: FeatureSet, n_buckets: int) -> tuple[np.ndarray, int, str]:
    if hasher.centers is not None and hasher.head_bits is not None:
        return np.asarray(hasher.centers, dtype=np.int8), hasher.head_bits, f"{hasher.method} head code"
    image, text, _ = features.part("train")
    codes = np.concatenate([to_signs(hasher.encoders["image"].real_codes(image)),
                            to_signs(hasher.encoders["text"].real_codes(text))])  # fmt: skip
    centers, _ = fit_centers(codes, min(n_buckets, len(codes)), np.random.default_rng(0), balance=BUCKET_BALANCE)
    return centers, hasher.bits, f"fitted on training codes, balanced (at most {BUCKET_BALANCE}x the mean)"


def write_bundle(
    out: Path,
    hasher: TrainedHasher,
    features: FeatureSet,
    metrics: dict,
    n_buckets: int = 64,
    reranker: Reranker | None = DEFAULT_RERANKER,
) -> Manifest:
    """Write the bundle atomically (temporary directory, then rename) and return its manifest.

    Every bundle carries semantic-index centers (the index's first level) over the first ``head_bits``
    bits of each code: a method's learned head (UDDH's shared code and centers), or else the whole
    code with ``n_buckets`` centers fitted on the codes of the training items of both modalities.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
    try:
        image_spec, text_spec, carried = _featurizers(features)
        featurizers = {"image": image_spec, "text": text_spec}
        modalities = {}
        dims = {"image": features.image.shape[1], "text": features.text.shape[1]}
        for modality in MODALITIES:
            encoder = hasher.encoders[modality]
            if encoder.input_dim != dims[modality]:
                raise ValueError(f"{modality} encoder takes {encoder.input_dim} features, data has {dims[modality]}")
            (staging / f"{modality}.onnx").write_bytes(encoder.onnx_graph().SerializeToString())
            modalities[modality] = {
                "onnx": f"{modality}.onnx",
                "input": FeaturesInput(dim=dims[modality]),
                "featurizer": featurizers[modality],
            }
        if isinstance(image_spec, ImageDescriptorSpec):
            (staging / IMAGE_FEATURIZER_FILE).write_bytes(features.image_featurizer.onnx_bytes)
        for name, source in carried.items():
            _carry(source, staging / name)
        centers, head_bits, source = _semantic_index(hasher, features, n_buckets)
        np.save(staging / "centers.npy", centers, allow_pickle=False)
        files = {p.name: _sha256(p) for p in sorted(staging.iterdir())}
        bundle_id = hashlib.sha256(json.dumps([hasher.method, hasher.bits, files]).encode()).hexdigest()[:12]
        manifest = Manifest(
            bundle_id=bundle_id,
            method=hasher.method,
            code_bits=hasher.bits,
            created_at=datetime.now(UTC).replace(microsecond=0),
            modalities=Modalities(**modalities),
            semantic_index=SemanticIndex(head_bits=head_bits, centers="centers.npy", k=len(centers), source=source),
            reranker=reranker,
            training=TrainingInfo(
                dataset=features.dataset,
                fingerprint=training_fingerprint(features),
                items=len(features.split.train),
                config=_json_values(hasher.config),
                history=_json_values(hasher.history),
            ),
            metrics=_json_values(metrics),
            files=files,
        )
        (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
        return manifest
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
