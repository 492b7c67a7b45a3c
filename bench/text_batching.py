"""What batching buys the MiniLM featurizer: ms per short query at 1, 2, 4, 8 and 16 queries a call, through
``TextEncoder.embed_texts`` (the function the micro-batcher runs), one onnxruntime thread.

    python -m bench.text_batching --reps 9

Queries: natural queries of one token count (no padding, as the micro-batcher's groups are). One query a
call runs the shipped int8 graph; more run its batch-invariant rewrite (``index.bundle.batch_invariant``).
Sizes are timed in alternation, ``--reps`` rounds of ``--seconds`` each; the median per size and its
speed-up over one query a call.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from index.bundle import load_bundle
from service.settings import DEFAULT_BUNDLE

QUERIES = ["red apple", "happy sun", "blue car", "a cat", "snow man", "green tree", "old house", "big dog",
           "the moon", "fast car", "old tree", "big cat", "the sun", "red car", "a dog", "pink pig"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path("var/bench/text_batching.json"))
    args = parser.parse_args()
    encoder = load_bundle(args.bundle, threads=1).text_featurizer
    lengths = [len(e.ids) for e in encoder.tokenizer.encode_batch(QUERIES)]
    common = Counter(lengths).most_common(1)[0][0]
    queries = [q for q, n in zip(QUERIES, lengths, strict=True) if n == common]
    sizes = [n for n in (1, 2, 4, 8, 16) if n <= len(queries)]
    per_query: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.reps):
        for n in sizes:
            batch, done, started = queries[:n], 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                encoder.embed_texts(batch)
                done += n
            per_query[n].append((time.perf_counter() - started) / done * 1e3)
    single = float(np.median(per_query[1]))
    rows = [{"queries_per_call": n, "tokens": common, "ms_per_query": round(float(np.median(v)), 3),
             "speedup": round(single / float(np.median(v)), 2)} for n, v in per_query.items()]  # fmt: skip
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
