"""What finding the item costs at scale: today's bundle and index beside the instance-aware default, one run.

    python -m bench.rerank_cost --items 1000000 --baseline-bundle 57c21e6

For each side, ``n`` items are made from its bundle's codes of OpenClipart's database images, replicated
with 5 % bit noise (as ``bench.memory_bench``), bucketed by ``--buckets`` centers fitted on them (the
baseline as it fitted them, plain; this tree with the capacity-bounded fit), written to a redis-server of
their own, and opened by a child process (``OMP_NUM_THREADS=1``, as the service sets) that reports its RSS
growth per item and the latency of one feature query at a time (the held-out texts' codes, k = 10,
``--probe`` buckets): Hamming order for the baseline, the asymmetric re-ranker with the queries' real codes
for this tree's bundle when it declares one. Bucket sizes are those of the stored items.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import numpy as np

from bench.memory_bench import (
    BUNDLE_ID,
    CENTERS_VERSION,
    INDEX_NAME,
    WARM_UP_INDEX,
    WARM_UP_ITEMS,
    K,
    fill,
    replicated_corpus,
    rss_bytes,
)

ROOT = Path(__file__).resolve().parent.parent


def baseline_bundle(ref: str, into: Path) -> Path:
    """The default bundle as committed at ``ref``, with this checkout's featurizer graphs (git-ignored;
    the manifest checks their sha256, so a different graph would fail to load)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "models/default"], check=True,
                             capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    for graph in (ROOT / "models" / "default").glob("featurizer_*"):
        (into / "models" / "default" / graph.name).write_bytes(graph.read_bytes())
    return into / "models" / "default"


def prepare(bundle_path: Path, n: int, buckets: int, balance: float | None, data: Path) -> dict:
    """Codes, bucket of each, centers, query codes and real codes of one side, as .npy files."""
    from index.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    codes, assignment, centers, q_text = replicated_corpus(bundle, n, buckets, balance)
    np.save(data / "codes.npy", codes)
    np.save(data / "buckets.npy", assignment)
    np.save(data / "centers.npy", centers)
    np.save(data / "queries.npy", bundle.packed_codes("text", q_text))
    np.save(data / "queries_real.npy", bundle.real_codes("text", q_text).astype(np.float32))
    reranker = bundle.manifest.reranker
    sizes = np.bincount(assignment, minlength=len(centers))
    return {"bundle": bundle.bundle_id, "method": bundle.method, "bits": bundle.bits,
            "rerank_candidates": None if reranker is None else reranker.candidates,
            "bucket_max_over_mean": round(float(sizes.max() / sizes.mean()), 2),
            "empty_buckets": int((sizes == 0).sum())}  # fmt: skip


def child(data: Path, redis_url: str, probe: int, candidates: int | None) -> dict:
    """One worker's view: RSS growth per item on opening, then single-query latency."""
    import gc
    import time

    import redis

    from bench.memory_bench import WARM_UP, _percentiles
    from index.code_space import CodeSpace
    from index.engine import HashIndex

    centers, queries = np.load(data / "centers.npy"), np.load(data / "queries.npy")
    real = np.load(data / "queries_real.npy") if candidates else None
    bits = queries.shape[1] * 8
    client = redis.Redis.from_url(redis_url)
    space = CodeSpace(BUNDLE_ID, bits, centers, CENTERS_VERSION, candidates)
    warm = HashIndex.open(client, WARM_UP_INDEX, space)
    warm.search("image", queries[:1], K, probe, query_real=None if real is None else real[:1])
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index = HashIndex.open(client, INDEX_NAME, space)
    seconds = time.perf_counter() - started
    gc.collect()
    n = int(np.load(data / "buckets.npy", mmap_mode="r").shape[0])
    report = {"rss_bytes_per_item": round((rss_bytes() - before) / n, 1), "reload_s": round(seconds, 2)}
    times = []
    for rounds, timed in ((WARM_UP, False), (len(queries), True)):
        for row in range(rounds):
            started = time.perf_counter()
            index.search("image", queries[row : row + 1], K, probe, None, None if real is None else real[row : row + 1])
            if timed:
                times.append(time.perf_counter() - started)
    return report | {"search": _percentiles(times)}


def side(name: str, bundle: Path, args: argparse.Namespace, balance: float | None, tmp: Path) -> dict:
    from index.redis_server import RedisServer

    data = tmp / name
    data.mkdir()
    row = {"side": name} | prepare(bundle, args.items, args.buckets, balance, data)
    (data / "redis").mkdir()
    server = RedisServer(data / "redis").start()
    try:
        fill(server.client(), data, WARM_UP_INDEX, WARM_UP_ITEMS)
        row["redis"] = fill(server.client(), data)
        command = [sys.executable, "-m", "bench.rerank_cost", "--child", str(data), "--redis-url", server.url,
                   "--probe", str(args.probe), "--candidates", str(row["rerank_candidates"] or 0)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=ROOT)
        row |= json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        server.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--baseline-bundle", default="57c21e6", help="git ref whose models/default is the baseline")
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("var/bench/rerank_cost.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--candidates", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.redis_url, args.probe, args.candidates or None)))
        return
    from training.bundle.writer import BUCKET_BALANCE

    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_bundle(args.baseline_bundle, Path(tmp) / "baseline-bundle")
        rows = [side("baseline", baseline, args, None, Path(tmp)),
                side("this tree", ROOT / "models" / "default", args, BUCKET_BALANCE, Path(tmp))]  # fmt: skip
    before, after = rows
    ratios = {
        "search_p99_after_over_before": round(after["search"]["p99_ms"] / before["search"]["p99_ms"], 3),
        "search_p50_after_over_before": round(after["search"]["p50_ms"] / before["search"]["p50_ms"], 3),
        "rss_per_item_after_over_before": round(after["rss_bytes_per_item"] / before["rss_bytes_per_item"], 2),
    }
    report = {"items": args.items, "probe": args.probe, "buckets": args.buckets, "sides": rows, "ratios": ratios}
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
