"""What batching buys the MiniLM featurizer: ms per short query at 1, 2, 4, 8 and 16 queries a call, one
onnxruntime thread, two ways:

- ``served``: ``TextEncoder.embed_texts``, the function the micro-batcher runs (one text alone runs the
  shipped int8 graph; more of one length share a run of its batch-invariant rewrite,
  ``index.bundle.batch_invariant``);
- ``shipped``: the shipped graph on the whole batch. Not batch-invariant (one quantisation scale for the
  whole batch), so not what serving may run, but the bound on what any batch-invariant rewrite of it
  could reach on this CPU.

    python -m bench.text_batching --reps 9

Queries: natural queries of one token count (no padding, as the micro-batcher's groups are). Sizes and
ways are timed in alternation, ``--reps`` rounds of ``--seconds`` each; the median per size, and its
speed-up over one query a call through the shipped graph.
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
    ways = {
        "served": encoder.embed_texts,
        "shipped": lambda texts: encoder.session.run(None, encoder.tokens(texts)),
    }
    times: dict[tuple[str, int], list[float]] = {(way, n): [] for way in ways for n in sizes}
    for _ in range(args.reps):
        for n in sizes:
            for way, call in ways.items():
                times[way, n].append(_ms_per_query(lambda c=call, b=queries[:n]: c(b), n, args.seconds))
    alone = float(np.median(times["shipped", 1]))
    rows = []
    for n in sizes:
        row: dict = {"queries_per_call": n, "tokens": common}
        for way in ways:
            ms = float(np.median(times[way, n]))
            row |= {f"{way}_ms_per_query": round(ms, 3), f"{way}_speedup": round(alone / ms, 2)}
        rows.append(row)
    for row in rows:
        print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


def _ms_per_query(call, queries_per_call: int, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += queries_per_call
    return (time.perf_counter() - started) / done * 1e3


if __name__ == "__main__":
    main()
