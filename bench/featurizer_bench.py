"""Throughput and latency of the pretrained ONNX featurizers on this machine (onnxruntime, CPU).

``python bench/featurizer_bench.py GRAPHS --threads 1 --threads 2`` times every ``image*.onnx`` and
``text*.onnx`` in ``GRAPHS``: images/s and texts/s at batch 32 and batch 1, and the latency of one
short query text (tokenizer included) as p50/p99 over 200 calls. Images are random pixels (a CNN's
cost does not depend on them); texts are OpenClipart-like lengths (title + description + keywords).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from index.bundle.pretrained import ImageEncoder, TextEncoder

QUERY = "red apple"
TEXTS = [
    "Cartoon zebra standing on grass animal africa stripes mammal",
    "Blue bicycle with a basket simple line drawing of a bike for transport clip art",
    "Flag of Sweden national flag blue yellow cross europe",
    "Happy sun smiling face weather summer yellow rays icon",
] * 8


def _rate(run: callable, items: int, seconds: float = 3.0) -> float:
    run()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        done += items
    return done / (time.perf_counter() - started)


def main(
    graphs: Annotated[Path, typer.Argument(help="folder with image*.onnx, text*.onnx and tokenizer.json")],
    threads: Annotated[list[int], typer.Option(help="intra-op threads; repeatable")] = [1, 2],  # noqa: B006
) -> None:
    rows = []
    tokenizer = (graphs / "tokenizer.json").read_bytes()
    for path in sorted(graphs.glob("*.onnx")):
        for n_threads in threads:
            row: dict = {"graph": path.name, "MB": round(path.stat().st_size / 1e6, 1), "threads": n_threads}
            if path.name.startswith("image"):
                encoder = ImageEncoder(path, n_threads)
                pixels = np.random.default_rng(0).integers(0, 256, (32, 3, encoder.size, encoder.size), np.uint8)
                row["size"] = encoder.size
                row["per_s_batch32"] = _rate(lambda e=encoder, p=pixels: e.embed_pixels(p), 32)
                row["per_s_batch1"] = _rate(lambda e=encoder, p=pixels[:1]: e.embed_pixels(p), 1)
            else:
                encoder = TextEncoder(path, tokenizer, n_threads)
                row["per_s_batch32"] = _rate(lambda e=encoder: e.embed_texts(TEXTS), 32)
                row["per_s_batch1"] = _rate(lambda e=encoder: e.embed_texts(TEXTS[:1]), 1)
                latencies = []
                for _ in range(201):
                    started = time.perf_counter()
                    encoder.embed_texts([QUERY])
                    latencies.append(time.perf_counter() - started)
                row["query_ms_p50"], row["query_ms_p99"] = np.percentile(np.array(latencies[1:]) * 1e3, [50, 99])
            rows.append({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()})
            typer.echo(json.dumps(rows[-1]))


if __name__ == "__main__":
    typer.run(main)
