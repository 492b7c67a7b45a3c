"""onnxruntime session options of the graphs a query runs, measured: graph optimisation level × memory arena,
one intra-op thread (the service's: one per worker process), calls/s of each case.

    python -m bench.session_options --bundle models/default --seconds 1

Cases: MiniLM (the shipped int8 graph) on one short query, its batch-invariant rewrite on 8 queries of
one token count; EfficientNet-Lite0 on one image; each hash function on one feature vector and on 1,000
(a batch of ingestion), as the bundle holds it (float64) and as its float32 twin
(``index.bundle.float32``). Calls/s per option pair and per case; the faster settings are what
``index.bundle`` uses. Inputs are random (the graphs' cost does not depend on them) except the texts,
which are natural queries.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from index.bundle import read_manifest
from index.bundle.batch_invariant import batch_invariant
from index.bundle.float32 import float32_graph
from index.bundle.pretrained import TextEncoder

LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
QUERIES = ["red apple", "happy sun", "blue car", "a cat", "snow man", "green tree", "old house", "big dog"]


def session(model: bytes, level: str, arena: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = LEVELS[level]
    options.enable_cpu_mem_arena = arena
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def rate(call: Callable[[], object], seconds: float) -> float:
    call()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call()
        done += 1
    return round(done / (time.perf_counter() - started), 1)


def cases(bundle: Path) -> dict[str, tuple[bytes, dict[str, np.ndarray]]]:
    """Per case: the graph and its feed."""
    manifest = read_manifest(bundle)
    text, image = manifest.modalities.text.featurizer, manifest.modalities.image.featurizer
    minilm = (bundle / text.onnx).read_bytes()
    tokenizer = TextEncoder(minilm, (bundle / text.tokenizer).read_bytes())
    ids = [e.ids for e in tokenizer.tokenizer.encode_batch(QUERIES)]
    same = [i for i in ids if len(i) == len(ids[0])]
    rng = np.random.default_rng(0)
    found = {
        "minilm_1_query": (minilm, tokenizer.tokens(QUERIES[:1])),
        f"minilm_rewrite_{len(same)}_queries": (
            batch_invariant(minilm),
            {"input_ids": np.array(same, np.int64), "attention_mask": np.ones((len(same), len(same[0])), np.int64)},
        ),
        "efficientnet_1_image": (
            (bundle / image.onnx).read_bytes(),
            {"pixels": rng.integers(0, 256, (1, 3, 224, 224), dtype=np.uint8)},
        ),
    }
    for modality in ("text", "image"):
        spec = manifest.modalities.of(modality)
        shipped = (bundle / spec.onnx).read_bytes()
        for precision, graph in (("shipped", shipped), ("float32", float32_graph(shipped))):
            for rows in (1, 1000):
                x = rng.standard_normal((rows, spec.input.dim)).astype(np.float32) * 0.05
                if graph is not None:
                    found[f"hash_{modality}_{precision}_{rows}"] = (graph, {"features": x})
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("models/default"))
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/session_options.json"))
    args = parser.parse_args()
    rows = []
    for name, (graph, feed) in cases(args.bundle).items():
        row: dict = {"case": name}
        for level in LEVELS:
            for arena in (True, False):
                run = session(graph, level, arena)
                row[f"{level}{'' if arena else '_no_arena'}"] = rate(lambda r=run, f=feed: r.run(None, f), args.seconds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
