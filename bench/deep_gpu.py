"""The deep trainers (UDDH, DMSFH, MMACH) in their papers' full settings on a GPU, beside the CPU preset.

    python -m bench.deep_gpu --export var/gpu/openclipart.npz                     # here: featurize and save
    python -m bench.deep_gpu --features var/gpu/openclipart.npz --method dmsfh --device cuda   # GPU machine

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


def export(path: Path) -> None:
    from training.datasets import load_dataset
    from training.featurize.pipeline import featurize

    features = featurize(load_dataset("openclipart"))
    arrays = {}
    for part in PARTS:
        image, text, labels = features.part(part)
        arrays |= {f"{part}_image": image, f"{part}_text": text, f"{part}_labels": labels}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def presets(method: str, bits: int, device: str) -> tuple[dict[str, object], Callable]:
    """The method's CPU and paper configurations, and ``train(image, text, labels, config) → hasher``."""
    common = {"device": device, "torch_threads": None}
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
    from training.codes import to_signs
    from training.evaluation.metrics import evaluate_codes

    data = np.load(path, allow_pickle=False)
    configs, train = presets(method, bits, device)
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
    parser.add_argument("--method", choices=("uddh", "dmsfh", "mmach"), nargs="+", default=["uddh"])
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.export:
        export(args.export)
        return
    for method in args.method:
        run(args.features, method, args.bits, args.device)


if __name__ == "__main__":
    main()
