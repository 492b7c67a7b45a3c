"""Featurize the whole OpenClipart corpus with the pretrained ONNX encoders and cache the matrices as ``.npy``.

The pixels go through :func:`index.bundle.pretrained.image_pixels`, the preprocessing the service uses,
so cached and served features agree. Decoding (some PNGs have 1e8 pixels) runs in a process pool; the
decoded blocks are kept in ``var/cache`` so that trying another graph on the same pixels costs only
inference.

``python -m training.featurize.pretrained_corpus GRAPHS OUT --variant fp32`` writes
``OUT/image_<variant>.npy``, ``OUT/text_<variant>.npy`` and ``OUT/items.json`` (the item ids, in row order).
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from index.bundle.pretrained import IMAGE_SIZE, ImageEncoder, TextEncoder, image_pixels
from training.datasets.base import save_npy_atomically
from training.datasets.openclipart import CACHE_DIR, DEFAULT_ROOT, load_openclipart


def _decode(args: tuple[str, int]) -> np.ndarray:
    path, size = args
    return image_pixels(path, size)  # the corpus is trusted: no pixel bound beyond Pillow's own


def corpus_pixels(ids: list[str], size: int = IMAGE_SIZE, root: Path = DEFAULT_ROOT, workers: int = 2) -> np.ndarray:
    """(n, 3, size, size) uint8 of the items ``ids``, decoded once and then read from the cache."""
    key = hashlib.sha256(f"{root.resolve()}|{size}|upscale|{'|'.join(ids)}".encode()).hexdigest()[:12]
    path = CACHE_DIR / f"pretrained-pixels-{key}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    jobs = [(str(root / "png" / f"{item}.png"), size) for item in ids]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pixels = np.stack(list(pool.map(_decode, jobs, chunksize=16)))
    save_npy_atomically(path, pixels)
    return pixels


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
    pixels = corpus_pixels(dataset.ids, image_encoder.size)
    timings["decode_s"] = time.perf_counter() - started
    started = time.perf_counter()
    image = image_encoder.embed_pixels(pixels)
    timings["image_s"] = time.perf_counter() - started
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
