"""Training time and memory of the shallow trainers on OpenClipart, against the CCA baseline.

    python -m bench.train_bench --bits 64 --methods cca dsfh amsh amsh-unpaired

Each method trains in its own process (clean peak-memory numbers) on the cached OpenClipart features.
Wall seconds cover the trainer call only; "trainer peak" is the largest amount of memory the trainer
itself held (tracemalloc sees NumPy's allocations); "process peak" is the whole process's max RSS.
Ratios are against CCA measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc


def measure(method: str, bits: int, seed: int) -> dict:
    from training.datasets import load_dataset
    from training.featurize.pipeline import featurize
    from training.registry import TRAINERS

    features = featurize(load_dataset("openclipart", seed=seed))
    tracemalloc.start()
    started = time.perf_counter()
    TRAINERS[method](features, bits, seed, {})
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "bits": bits,
        "wall_s": round(seconds, 2),
        "trainer_peak_mib": round(peak / 2**20, 1),
        "process_peak_mib": round(rss_kib / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=["cca", "dsfh", "amsh", "amsh-unpaired"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.bits, args.seed)))
        return
    rows = []
    for method in args.methods:
        command = [sys.executable, "-m", "bench.train_bench", "--one", method, "--bits", str(args.bits)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    baseline = next((r for r in rows if r["method"] == "cca"), rows[0])
    for row in rows:
        row["wall_vs_cca"] = round(row["wall_s"] / baseline["wall_s"], 1)
        row["trainer_peak_vs_cca"] = round(row["trainer_peak_mib"] / baseline["trainer_peak_mib"], 1)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
