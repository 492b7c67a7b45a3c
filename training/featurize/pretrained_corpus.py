"""Featurize the whole OpenClipart corpus with the pretrained ONNX encoders and cache the matrices as ``.npy``.

The pixels go through :func:`index.bundle.pretrained.image_pixels`, the preprocessing the service uses,
so cached and served features agree. Decoding (some PNGs have 1e8 pixels) runs in a process pool, a chunk
at a time, each chunk embedded as it comes: only features are kept (``var/cache/pretrained-features``).

``python -m training.featurize.pretrained_corpus GRAPHS OUT --variant fp32`` writes
``OUT/image_<variant>.npy``, ``OUT/text_<variant>.npy`` and ``OUT/items.json`` (the item ids, in row order).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from index.bundle.pretrained import IMAGE_DIM, ImageEncoder, Progress, TextEncoder, image_pixels
from training.datasets.openclipart import DEFAULT_ROOT, load_openclipart


def _decode(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    return image_pixels(path, size)  # the corpus is trusted: no pixel bound beyond Pillow's own


STREAM_CHUNK = 512  # images decoded and held at once: 77 MB of pixels at 224 × 224, never the whole corpus


def embed_corpus_images(
    ids: list[str], encoder: ImageEncoder, root: Path = DEFAULT_ROOT, workers: int = 2, progress: Progress | None = None
) -> np.ndarray:
    """(n, 1280) features of the items ``ids``: decoded in a process pool chunk by chunk and embedded as
    they come, so no pixel block of the whole corpus (1 GB at 224 × 224) is kept in memory or on disk;
    the features themselves are what callers cache."""
    jobs = [(str(root / "png" / f"{item}.png"), encoder.size) for item in ids]
    parts = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(jobs), STREAM_CHUNK):
            pixels = np.stack(list(pool.map(_decode, jobs[start : start + STREAM_CHUNK], chunksize=16)))
            parts.append(encoder.embed_pixels(pixels, progress=progress))
    return np.concatenate(parts) if parts else np.zeros((0, IMAGE_DIM), np.float32)


def main(
    graphs: Annotated[Path, typer.Argument(help="folder with image*.onnx, text*.onnx and tokenizer.json")],
    out: Annotated[Path, typer.Argument(help="folder for the .npy files and items.json")],
    variant: Annotated[str, typer.Option(help="fp32 or int8: which graphs, and the suffix of the files")] = "fp32",
    threads: int = 2,
) -> None:
    """Featurize every item of the corpus both ways and print the timings as JSON."""
    suffix = "" if variant == "fp32" else f".{variant}"
    dataset = load_openclipart()
    image_encoder = ImageEncoder(graphs / f"image{suffix}.onnx", threads)
    text_encoder = TextEncoder(graphs / f"text{suffix}.onnx", (graphs / "tokenizer.json").read_bytes(), threads)
    timings = {}
    started = time.perf_counter()
    image = embed_corpus_images(dataset.ids, image_encoder)
    timings["decode_and_image_s"] = time.perf_counter() - started
    started = time.perf_counter()
    text = text_encoder.embed_texts(list(dataset.texts))
    timings["text_s"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / f"image_{variant}.npy", image, allow_pickle=False)
    np.save(out / f"text_{variant}.npy", text, allow_pickle=False)
    (out / "items.json").write_text(json.dumps(dataset.ids))
    typer.echo(json.dumps({"items": len(dataset.ids), "variant": variant, **timings}, indent=2))


if __name__ == "__main__":
    typer.run(main)
