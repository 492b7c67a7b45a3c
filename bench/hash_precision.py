"""The hash functions in float32 (``index.bundle.float32``) against their float64 graphs, in one run: bits that
differ on every OpenClipart item, rows run again in float64, and ms per batch of 1,000 items.

    python -m bench.hash_precision --reps 7

Per modality of the default bundle, on the pretrained features of all items (training cache): the codes
of the float64 graph, of its float32 twin alone, and of ``Bundle.packed_codes`` (the twin, rows within
``MARGIN`` of 0 rechecked in float64: what the service runs), compared bit by bit on the held-out split
and on the database split; then batches of 1,000 database items timed in alternation, float64 graph
and ``packed_codes``, one onnxruntime thread, the median of ``--reps`` each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from index.bundle import INPUT_NAME, load_bundle
from index.codes import pack_signs, to_signs
from service.settings import DEFAULT_BUNDLE
from training.datasets.openclipart import load_openclipart
from training.featurize.pretrained import pretrained_features


def _bits(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("var/bench/hash_precision.json"))
    args = parser.parse_args()
    bundle, corpus = load_bundle(args.bundle, threads=1), load_openclipart()
    features = dict(zip(("image", "text"), pretrained_features(corpus)[:2], strict=True))
    rows = []
    for modality, x in features.items():
        wide, narrow = bundle.sessions[modality], bundle._float32[modality]
        row: dict = {"modality": modality, "bundle": bundle.bundle_id}
        for part, index in (("held_out", corpus.split.query), ("database", corpus.split.database)):
            float64 = pack_signs(to_signs(wide.run(None, {INPUT_NAME: x[index]})[0]))
            alone = pack_signs(to_signs(narrow.session.run(None, {INPUT_NAME: x[index]})[0]))
            before = narrow.rows_rechecked
            served = bundle.packed_codes(modality, x[index])
            row[part] = {
                "items": len(index),
                "bits": int(float64.size * 8),
                "differing_float32_alone": _bits(alone, float64),
                "differing_served": _bits(served, float64),
                "rows_rechecked": narrow.rows_rechecked - before,
            }
        batch = x[corpus.split.database[:1000]]
        times: dict[str, list[float]] = {"float64_ms": [], "served_ms": []}
        for _ in range(args.reps):
            for name, call in (("float64_ms", lambda b=batch, w=wide: w.run(None, {INPUT_NAME: b})),
                               ("served_ms", lambda b=batch, m=modality: bundle.packed_codes(m, b))):  # fmt: skip
                started = time.perf_counter()
                call()
                times[name].append((time.perf_counter() - started) * 1e3)
        row |= {name: round(float(np.median(values)), 2) for name, values in times.items()}
        row["speedup"] = round(row["float64_ms"] / row["served_ms"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
