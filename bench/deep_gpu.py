"""The deep trainers (UDDH, DMSFH, MMACH) in their papers' full settings on a GPU, beside the CPU preset.

    python -m bench.deep_gpu --export var/gpu/openclipart.npz                     # here: featurize and save
    python -m bench.deep_gpu --features var/gpu/openclipart.npz --method dmsfh --device cuda   # GPU machine
    python -m bench.deep_gpu --features var/gpu/openclipart.npz --method dmsfh-cnn --device cuda   # raw pixels

The GPU machine has no OpenClipart and no FAISS, so the features travel as one ``.npz`` and this script
imports only the trainers and the evaluation protocol. Per method it trains the CPU preset (the
baseline) and the paper preset at one code length on the same device and prints one JSON line each:
training seconds and mAP / MAP@50 / P@10 both ways on the query set against the database.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

PARTS = ("train", "query", "database")


def export(path: Path, pixel_side: int) -> None:
    """Features of every part, and the raw pixels average-pooled to ``pixel_side`` (uint8, flattened
    3 × s × s) for DMSFH's CNN image network."""
    from training.datasets import load_dataset
    from training.featurize.pipeline import featurize

    dataset = load_dataset("openclipart")
    features = featurize(dataset)
    n, channels, side, _ = dataset.images.shape
    factor = side // pixel_side
    pooled = dataset.images.reshape(n, channels, pixel_side, factor, pixel_side, factor).mean((3, 5))
    pixels = pooled.round().astype(np.uint8).reshape(n, -1)
    arrays = {}
    for part in PARTS:
        image, text, labels = features.part(part)
        rows = getattr(features.split, part)
        arrays |= {f"{part}_image": image, f"{part}_text": text, f"{part}_labels": labels}
        arrays[f"{part}_pixels"] = pixels[rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def presets(method: str, bits: int, device: str, pixel_side: int) -> tuple[dict[str, object], Callable]:
    """The method's CPU and paper configurations, and ``train(image, text, labels, config) → hasher``."""
    common = {"device": device, "torch_threads": None}
    if method == "dmsfh-cnn":  # DMSFH with its CNN over raw pixels in place of the feature MLP, CPU schedule
        from training.methods.dmsfh import DMSFHConfig, train_dmsfh

        config = DMSFHConfig(bits=bits, image_net="cnn", image_size=pixel_side, **common)
        return {"cpu_preset_cnn": config}, lambda image, text, labels, c: train_dmsfh(image, text, labels, c, seed=0)
    if method == "uddh":
        from training.methods.uddh import UDDHConfig, train_uddh

        shared = max(8, bits // 16 * 8)  # as the CLI: half the code is the head
        return (
            {
                "cpu_preset": UDDHConfig(shared, bits - shared, 64, **common),
                "paper": UDDHConfig.paper(shared, bits - shared, 64, **common),
            },
            lambda image, text, labels, config: train_uddh(image, text, config, seed=0).hasher,
        )
    if method == "dmsfh":
        from training.methods.dmsfh import DMSFHConfig as Config
        from training.methods.dmsfh import train_dmsfh as train
    elif method == "mmach":
        from training.methods.mmach import MMACHConfig as Config
        from training.methods.mmach import train_mmach as train
    else:
        raise ValueError(f"unknown deep method {method!r}")
    return (
        {"cpu_preset": Config(bits=bits, **common), "paper": Config.paper(bits, **common)},
        lambda image, text, labels, config: train(image, text, labels, config, seed=0),
    )


def run(path: Path, method: str, bits: int, device: str) -> None:
    from index.codes import to_signs
    from training.evaluation.metrics import evaluate_codes

    data = dict(np.load(path, allow_pickle=False))
    if method == "dmsfh-cnn":  # the image input is the pixels, in [0, 1]
        for part in ("train", "query", "database"):
            data[f"{part}_image"] = data[f"{part}_pixels"].astype(np.float32) / 255
    pixel_side = round((data["train_pixels"].shape[1] / 3) ** 0.5)
    configs, train = presets(method, bits, device, pixel_side)
    report: dict = {
        "method": method,
        "bits": bits,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    }
    for name, config in configs.items():
        started = time.perf_counter()
        hasher = train(data["train_image"], data["train_text"], data["train_labels"], config)
        seconds = time.perf_counter() - started
        codes = {
            f"{part}_{m}": to_signs(hasher.encoders[m].real_codes(data[f"{part}_{m}"]))
            for part in ("query", "database")
            for m in ("image", "text")
        }
        row = {"seconds": round(seconds, 1)}
        for direction, (q, d) in {"i2t": ("image", "text"), "t2i": ("text", "image")}.items():
            m = evaluate_codes(
                codes[f"query_{q}"], codes[f"database_{d}"], data["query_labels"], data["database_labels"]
            )
            row |= {f"{direction}_{key}": round(m[key], 4) for key in ("mAP", "MAP@50", "P@10")}
        report[name] = row
        print(json.dumps({method: {name: row}}), flush=True)
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--features", type=Path)
    parser.add_argument("--method", choices=("uddh", "dmsfh", "mmach", "dmsfh-cnn"), nargs="+", default=["uddh"])
    parser.add_argument("--pixels", type=int, default=32, help="side of the exported pixels (for dmsfh-cnn)")
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.export:
        export(args.export, args.pixels)
        return
    for method in args.method:
        run(args.features, method, args.bits, args.device)


if __name__ == "__main__":
    main()
