"""Pretrained features of a raw dataset, computed through the serving runtime so training and serving agree.

The featurizer graphs are built once from the installed weight packages (deterministic export, see
:mod:`training.featurize.pretrained_export`) into ``var/cache/pretrained-graphs``. Features are run by
:mod:`index.bundle.pretrained` (the code the service runs) and cached under ``var/cache/pretrained-features``,
keyed by the graph's sha256 and the inputs (image: corpus root, preprocessing and item ids; text: the texts).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.bundle.manifest import EfficientNetLite0Spec, Manifest, MiniLMSpec
from index.bundle.pretrained import IMAGE_DIM, TEXT_DIM, ImageEncoder, TextEncoder
from training.datasets.base import CrossModalDataset, save_npy_atomically
from training.datasets.openclipart import CACHE_DIR

GRAPHS_DIR = CACHE_DIR / "pretrained-graphs"
FEATURES_DIR = CACHE_DIR / "pretrained-features"
# fp32 image graph: its int8 variants (dynamic and static QDQ) run 6-15x slower on this CPU (phase 1's bench).
IMAGE_GRAPH = "image.onnx"
# int8 text graph: DSFH-64 mAP within 0.004 of fp32 both ways, one query in 9 ms instead of 21 ms (phase 1).
TEXT_GRAPH = "text.int8.onnx"
TOKENIZER = "tokenizer.json"
FEATURIZER_FILES = (IMAGE_GRAPH, TEXT_GRAPH, TOKENIZER)
PREPROCESS_TAG = "upscale-v1"  # bump when image_pixels changes: cached image features then recompute
THREADS = 2  # training featurizes in bulk; the result does not depend on it (checked by the parity test)


def build_featurizer_files(out: Path) -> dict[str, str]:
    """Build the featurizer files a bundle carries into ``out``, with a bar over the steps (the first
    training run waits for it); returns ``{name: sha256}``."""
    from training.featurize.pretrained_export import export_image, export_text, minilm_tokenizer_json, quantize

    out.mkdir(parents=True, exist_ok=True)
    fp32_text = out / "text.fp32.onnx.tmp"
    steps: list[tuple[str, Callable[[], object]]] = [
        ("image graph", lambda: export_image(out / IMAGE_GRAPH)),
        ("text graph", lambda: export_text(fp32_text)),
        ("int8 text graph", lambda: quantize(fp32_text, out / TEXT_GRAPH)),
        ("tokenizer", lambda: (out / TOKENIZER).write_bytes(minilm_tokenizer_json())),
    ]
    with tqdm(total=len(steps), desc="building the featurizer graphs", unit="step") as bar:
        for name, step in steps:
            bar.set_postfix_str(name)
            step()
            bar.update()
    fp32_text.unlink()
    return {name: sha256_file(out / name) for name in FEATURIZER_FILES}


def install_featurizer_files(bundle: Path, manifest: Manifest) -> Iterator[tuple[str, str]]:
    """Build the pretrained featurizer files ``manifest`` names, check each against its sha256 there and
    copy it into ``bundle``, yielding (file, sha256) as each is copied; nothing when the bundle names none.
    A ValueError when a build differs: the bundle was made with other versions of the weight packages."""
    image, text = manifest.modalities.image.featurizer, manifest.modalities.text.featurizer
    targets = {IMAGE_GRAPH: image.onnx} if isinstance(image, EfficientNetLite0Spec) else {}
    targets |= {TEXT_GRAPH: text.onnx, TOKENIZER: text.tokenizer} if isinstance(text, MiniLMSpec) else {}
    if not targets:
        return
    with tempfile.TemporaryDirectory() as scratch:
        digests = build_featurizer_files(Path(scratch))
        for built, name in targets.items():
            if digests[built] != manifest.files[name]:
                raise ValueError(
                    f"{name}: built sha256 {digests[built]} differs from the manifest's {manifest.files[name]} "
                    "(another version of torch, onnx or the weight packages than the bundle was made with)"
                )
            shutil.copyfile(Path(scratch) / built, bundle / name)
            yield name, digests[built]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def featurizer_graphs(folder: Path = GRAPHS_DIR) -> Path:
    """The folder holding the featurizer files, built on first use (about 30 s, torch)."""
    if not all((folder / name).is_file() for name in FEATURIZER_FILES):
        build_featurizer_files(folder)
    return folder


@dataclass
class PretrainedImage:
    """The image featurizer of a feature set: its graph file (copied into bundles) and the runtime."""

    graph: Path
    encoder: ImageEncoder


@dataclass
class PretrainedText:
    """The text featurizer of a feature set: graph, tokenizer (copied into bundles) and the runtime."""

    graph: Path
    tokenizer: Path
    encoder: TextEncoder


def image_cache_key(graph: Path, dataset: CrossModalDataset) -> str:
    source = [dataset.pixels_key] if dataset.pixels_key else [str(dataset.image_root), dataset.ids]
    tag = json.dumps([sha256_file(graph), PREPROCESS_TAG, *source])
    return "image-" + hashlib.sha256(tag.encode()).hexdigest()[:16]


def text_cache_key(graph: Path, tokenizer: Path, texts: list[str]) -> str:
    tag = json.dumps([sha256_file(graph), sha256_file(tokenizer), texts])  # batching changes no feature
    return "text-" + hashlib.sha256(tag.encode()).hexdigest()[:16]


def _cached(key: str, compute: Callable[[], np.ndarray], dim: int) -> np.ndarray:
    path = FEATURES_DIR / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    started = time.perf_counter()
    features = compute()
    if features.shape[1] != dim:
        raise ValueError(f"featurizer gave {features.shape[1]} dimensions, expected {dim}")
    save_npy_atomically(path, features)
    (path.with_suffix(".json")).write_text(
        json.dumps({"rows": len(features), "seconds": time.perf_counter() - started})
    )
    return features


def text_features(text: PretrainedText, texts: list[str]) -> np.ndarray:
    """(n, 384) features of ``texts``, as the service computes them (batched by token count), cached."""

    def compute() -> np.ndarray:
        with tqdm(total=len(texts), desc="text features", unit="text") as bar:
            return text.encoder.embed_texts(texts, progress=bar.update)

    return _cached(text_cache_key(text.graph, text.tokenizer, texts), compute, TEXT_DIM)


def pretrained_text(graph: Path, tokenizer: Path) -> PretrainedText:
    """The text featurizer of a MiniLM graph and its tokenizer, run as training featurizes in bulk."""
    return PretrainedText(graph, tokenizer, TextEncoder(graph, tokenizer.read_bytes(), THREADS))


def pretrained_features(
    dataset: CrossModalDataset, graphs: Path | None = None
) -> tuple[np.ndarray, np.ndarray, PretrainedImage, PretrainedText]:
    """(image features, text features, image featurizer, text featurizer) of a raw dataset with image files
    (decoded here) or with pixels already decoded at the encoder's size (``pixels_key`` set)."""
    if (dataset.image_root is None and dataset.pixels_key is None) or dataset.text_kind != "raw":
        raise ValueError(f"{dataset.name}: pretrained features need image files and raw texts")
    folder = featurizer_graphs(graphs or GRAPHS_DIR)
    image = PretrainedImage(folder / IMAGE_GRAPH, ImageEncoder(folder / IMAGE_GRAPH, THREADS))
    text = pretrained_text(folder / TEXT_GRAPH, folder / TOKENIZER)

    def image_features() -> np.ndarray:
        from training.featurize.pretrained_corpus import embed_corpus_images

        with tqdm(total=len(dataset.ids), desc="image features", unit="image") as bar:
            if dataset.pixels_key is not None:
                return image.encoder.embed_pixels(dataset.images, progress=bar.update)
            return embed_corpus_images(dataset.ids, image.encoder, dataset.image_root, progress=bar.update)

    image_matrix = _cached(image_cache_key(image.graph, dataset), image_features, IMAGE_DIM)
    return image_matrix, text_features(text, list(dataset.texts)), image, text
