"""UDDH in the paper's full schedule on a GPU, from OpenClipart features exported here.

    python -m bench.uddh_gpu --export var/gpu/openclipart.npz          # here: featurize and save
    python -m bench.uddh_gpu --features var/gpu/openclipart.npz --device cuda   # on the GPU machine

The GPU machine has no OpenClipart and no FAISS, so the features travel as one ``.npz`` and this script
imports only the trainer and the evaluation protocol. It prints one JSON line of timings and metrics,
with the CPU preset trained in the same run as the baseline.
"""

from __future__ import annotations

import argparse
import json
import time
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


def run(path: Path, device: str, shared: int, specific: int, k: int) -> None:
    from training.codes import to_signs
    from training.evaluation.metrics import evaluate_codes
    from training.methods.uddh import UDDHConfig, train_uddh

    data = np.load(path, allow_pickle=False)
    report: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu"}
    configs = {
        "cpu_preset": UDDHConfig(shared, specific, k, device=device, torch_threads=None),
        "paper": UDDHConfig.paper(shared, specific, k, device=device, torch_threads=None),
    }
    for name, config in configs.items():
        started = time.perf_counter()
        hasher = train_uddh(data["train_image"], data["train_text"], config, seed=0).hasher
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
        print(json.dumps({name: row}), flush=True)
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--features", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shared-bits", type=int, default=32)
    parser.add_argument("--specific-bits", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=64)
    args = parser.parse_args()
    if args.export:
        export(args.export)
    else:
        run(args.features, args.device, args.shared_bits, args.specific_bits, args.clusters)


if __name__ == "__main__":
    main()
