"""HTTP benchmark of the service at 1 M indexed items on loopback (wrk as the load generator).

    python -m bench.http_bench --items 1000000 --duration 20

Set-up: a redis-server of its own; the default bundle's codes of the real OpenClipart database images,
replicated with bit noise to ``--items`` and written to Redis, then re-bucketed into ``--buckets`` centers
fitted on them (``python -m index rebucket``, as an operator does at this scale: the index section of
docs/results.md measures retention at 1 M with 1,024 buckets); then ``python -m service`` with
``--workers`` worker processes, each of which rebuilds its index from Redis. Load: wrk (``apt-get
install wrk``), one thread, ``--connections`` connections, on text → image queries given as feature
vectors, raw text (the query items' full texts, and the 1–4 word natural queries people type) and raw
images (base64 JSON), and on ``GET /healthz`` as the framework's own floor
(the ratio baseline). Ingestion: items/s through ``POST /v1/items:batch`` with feature vectors,
batches of 256.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from bench.http_load import preload, run_wrk, start_service, wait_ready
from index.bundle import load_bundle
from index.rebuild import rebucket
from index.redis_server import RedisServer
from index.store import RedisStore
from service.settings import DEFAULT_BUNDLE
from training.datasets.openclipart import DEFAULT_ROOT, load_openclipart
from training.evaluation.natural_queries import NATURAL_QUERIES
from training.featurize.pretrained import pretrained_features


def database_image_features(bundle, corpus) -> np.ndarray:
    """The corpus images' features as the bundle's image featurizer computes them: a pretrained encoder's
    from the training cache (the same ONNX graph, fed 224 px pixels decoded from the files), the classic
    descriptor's from the corpus's own 64 px pixels."""
    if bundle.manifest.modalities.image.featurizer.kind == "efficientnet-lite0":
        return pretrained_features(corpus)[0]
    return bundle.image_features(corpus.images)


def query_bodies(bundle, corpus, queries: np.ndarray) -> dict[str, tuple[str, list[dict]]]:
    """Per query kind: the route and request bodies (real OpenClipart query items)."""
    texts = [corpus.texts[i] for i in queries]
    features = bundle.text_features(texts)
    known = [t for t, f in zip(texts, features, strict=True) if f.any()]  # others are a 422 by design
    images = [(DEFAULT_ROOT / "png" / f"{corpus.ids[i]}.png").read_bytes() for i in queries[:50]]
    return {
        "features": ("text-to-image", [{"features": f.tolist(), "k": 10} for f in features]),
        "raw_text": ("text-to-image", [{"text": t, "k": 10} for t in known]),
        "raw_short_text": ("text-to-image", [{"text": q, "k": 10} for q in NATURAL_QUERIES]),
        "raw_image": (
            "image-to-text",
            [{"image_base64": base64.b64encode(b).decode(), "k": 10} for b in images],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", type=int, nargs="+", default=[8], help="wrk connections; each a round")
    parser.add_argument("--probe", type=int, default=8)
    parser.add_argument("--buckets", type=int, default=1024, help="re-bucket into this many centers; 0: keep")
    parser.add_argument("--workers", type=int, default=2, help="service worker processes (one per core here)")
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    parser.add_argument("--out", type=Path, default=Path("var/bench/http.json"))
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    corpus = load_openclipart()
    database = corpus.split.database
    report: dict = {
        "items": args.items,
        "bundle": bundle.bundle_id,
        "connections": args.connections,
        "workers": args.workers,
        "buckets": args.buckets or len(bundle.centers),
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        service = None
        try:
            store = RedisStore(server.client(), "bench", bundle.bundle_id)
            codes = bundle.packed_codes("image", database_image_features(bundle, corpus)[database])
            report["preload_s"] = round(preload(store, bundle, codes, corpus.labels[database], args.items), 1)
            if args.buckets:
                started = time.perf_counter()
                rebucket(store, bundle.bits, args.buckets)
                report["rebucket_s"] = round(time.perf_counter() - started, 1)
            service, url = start_service(server.url, args.probe, args.bundle, args.workers)
            report["startup_rebuild_s"] = round(wait_ready(url, args.workers, args.items, 900), 1)
            bodies = {}
            for name, (endpoint, requests) in query_bodies(bundle, corpus, corpus.split.query[:200]).items():
                bodies[name] = (endpoint, Path(tmp) / f"{name}.jsonl")
                bodies[name][1].write_text("\n".join(json.dumps(b) for b in requests))
            for connections in args.connections:
                report[f"c{connections}"] = load_round(url, bodies, args.duration, connections)
            report["ingest"] = ingest_rate(url, bundle.input_dim("text"))
            print("ingest:", json.dumps(report["ingest"]), flush=True)
        finally:
            if service is not None:
                service.terminate()
                service.wait(30)
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


def load_round(url: str, bodies: dict[str, tuple[str, Path]], duration: int, connections: int) -> dict:
    """wrk on /healthz (the baseline), then on each kind of query, at one number of connections."""
    healthz = run_wrk(f"{url}/healthz", None, duration, connections)
    print(f"{connections} connections, GET /healthz (floor):", json.dumps(healthz), flush=True)
    rows = {"healthz": healthz}
    for name, (endpoint, path) in bodies.items():
        result = run_wrk(f"{url}/v1/search/{endpoint}", path, duration, connections)
        result["qps_vs_healthz"] = round(result["qps"] / healthz["qps"], 2)
        rows[f"search_{name}"] = result
        print(f"{connections} connections, search ({name}):", json.dumps(result), flush=True)
    return rows


def ingest_rate(url: str, text_dim: int, batches: int = 20, size: int = 256) -> dict:
    rng = np.random.default_rng(0)
    headers = {"content-type": "application/json", "x-api-key": "bench"}
    started = time.perf_counter()
    for b in range(batches):
        items = [
            {
                "id": f"bench-txt-{b}-{i}",
                "modality": "text",
                "features": rng.random(text_dim).round(3).tolist(),
            }
            for i in range(size)
        ]
        body = json.dumps({"items": items}).encode()
        request = urllib.request.Request(f"{url}/v1/items:batch", data=body, headers=headers)
        with urllib.request.urlopen(request, timeout=60) as response:
            assert json.load(response)["stored"] == size
    seconds = time.perf_counter() - started
    return {"items_per_s": round(batches * size / seconds, 1), "batch_size": size, "batches": batches}


if __name__ == "__main__":
    main()
