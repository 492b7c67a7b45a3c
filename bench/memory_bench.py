"""A worker's index in memory: RSS per item, start-up reload and search latency, this tree vs a baseline.

    python -m bench.memory_bench --items 1000000 4000000 --baseline main

For each size: a redis-server of its own (AOF ``appendfsync always``, as everywhere) is filled once with
``n`` items (the default bundle's codes of the real OpenClipart database images, replicated with bit
noise as ``bench.index_bench`` does; ids like ``openclipart/item-0000001``; metadata
``{"title": "clip art", "category": "c<i mod 20>"}``) bucketed by ``--buckets`` centers fitted on them.
Then three child processes, one at a time (``OMP_NUM_THREADS=1``, as the service sets), each importing
its code and building the same structures over a small index of 2,000 items first (so that first-use
costs are not counted per item), then measuring RSS (``/proc/self/status``) before and after building
its structures:

- ``codes``: only a ``BucketScan`` filled from the codes in memory, no Redis, then the freed heap
  returned as a load does (``index.memory``): the FAISS codes alone;
- ``before``: the baseline ref's ``index`` package (``git archive``; its filter loop is the search
  route's, so ``service`` too) opening the index from Redis, as a worker does at start-up;
- ``after``: this tree's.

Each opening child reports its reload time, its RSS growth per item, and, one query at a time (the
text query codes of OpenClipart, k = 10, ``--probe`` buckets), the p50/p99 of an unfiltered search and
of a search filtered on ``category`` (one item in 20 matches). Ratios are against the baseline of the
same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
INDEX_NAME, BUNDLE_ID, CENTERS_VERSION = "bench", "bench-bundle", "bench"
CATEGORIES = 20  # filtered searches ask for one category: one item in CATEGORIES matches
K = 10
WARM_UP = 20  # queries run before timing: first-call costs (script loading, page faults) are not latency
WARM_UP_ITEMS = 2000  # items of the small index each child builds before measuring (see ``child``)
WARM_UP_INDEX = "bench-warm-up"
_FILL_BATCH = 5000  # items per copy script while filling Redis


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1e3
    return {"p50_ms": round(float(np.median(ms)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def _timed(search, queries: np.ndarray) -> dict:
    for q in queries[:WARM_UP]:
        search(q[None])
    times = []
    for q in queries:
        started = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - started)
    return _percentiles(times)


def child(kind: str, data: Path, redis_url: str | None, probe: int, reloads: int = 1) -> dict:
    """One measured process: imports first, then RSS before and after building; prints JSON."""
    import gc

    import redis

    from index.code_space import CodeSpace
    from index.engine import HashIndex
    from index.scan import BucketScan

    if kind == "codes":
        from index.memory import release_freed_memory

    centers = np.load(data / "centers.npy")
    queries = np.load(data / "queries.npy")
    n = int(np.load(data / "buckets.npy", mmap_mode="r").shape[0])
    filtered_search = None
    if kind == "before" and "where" not in HashIndex.search.__code__.co_varnames:
        from types import SimpleNamespace

        from service.routes.search import _nearest  # the baseline filters in its route

        filtered_search = _nearest
    # The same work on a small index first, so that what the first use of FAISS, Redis and the scripts costs
    # (library pages, connection, buffers) is not counted per item.
    if kind == "codes":
        warm = BucketScan(queries.shape[1] * 8, len(centers))
        warm.add(np.arange(1, WARM_UP_ITEMS + 1), np.load(data / "codes.npy", mmap_mode="r")[:WARM_UP_ITEMS],
                 np.load(data / "buckets.npy", mmap_mode="r")[:WARM_UP_ITEMS])  # fmt: skip
    else:
        client = redis.Redis.from_url(redis_url)

        def open_index() -> HashIndex:
            return HashIndex.open(
                client, INDEX_NAME, CodeSpace(BUNDLE_ID, queries.shape[1] * 8, centers, CENTERS_VERSION)
            )

        warm = HashIndex.open(
            client, WARM_UP_INDEX, CodeSpace(BUNDLE_ID, queries.shape[1] * 8, centers, CENTERS_VERSION)
        )
        warm.search("image", queries[:1], K, probe, **({} if filtered_search else {"where": {"category": "c3"}}))
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    if kind == "codes":
        codes, buckets = np.load(data / "codes.npy"), np.load(data / "buckets.npy")
        scan = BucketScan(codes.shape[1] * 8, len(centers))
        scan.add(np.arange(1, n + 1), codes, buckets)
        del codes, buckets
        release_freed_memory()  # as loading an index does: what is left is the lists
    else:
        index = open_index()
    seconds = time.perf_counter() - started
    gc.collect()
    grown = rss_bytes() - before
    report = {
        "kind": kind,
        "items": n,
        "rss_bytes_per_item": round(grown / n, 1),
        "build_or_reload_s": round(seconds, 2),
    }
    if kind == "codes":
        return report
    wanted = {"category": "c3"}
    report["search"] = _timed(lambda q: index.search("image", q, K, probe), queries)
    if filtered_search is not None:
        model = SimpleNamespace(index=index)
        report["filtered"] = _timed(lambda q: filtered_search(model, "image", q, K, probe, wanted), queries)
    else:
        report["filtered"] = _timed(lambda q: index.search("image", q, K, probe, where=wanted), queries)
    # More reloads of the same items, each into a fresh index after the last one is freed: one reload's
    # time moved 2x between runs on a quiet machine, so the ratio is taken between medians.
    times = [round(seconds, 2)]
    for _ in range(reloads - 1):
        del index
        gc.collect()
        started = time.perf_counter()
        index = open_index()
        times.append(round(time.perf_counter() - started, 2))
    report["reload_s_each"] = times
    report["reload_s_median"] = round(float(np.median(times)), 2)
    return report


def baseline_tree(ref: str, into: Path) -> Path:
    """The baseline's ``index`` and ``service`` packages, with this tree's compiled scan kernel (built at
    install, not in git)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "index", "service"], check=True,
                             capture_output=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    for kernel in (ROOT / "index").glob("_hamming*.so"):
        shutil.copy(kernel, into / "index" / kernel.name)
    return into


def run_child(kind: str, pythonpath: Path, data: Path, redis_url: str, probe: int, reloads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--data", str(data),
               "--redis-url", redis_url, "--probe", str(probe), "--reloads", str(reloads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1"}  # as service/__init__.py sets
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=pythonpath)
    return json.loads(done.stdout.strip().splitlines()[-1])


def replicated_corpus(bundle, n: int, buckets: int, balance: float | None = None):
    """``n`` codes made from a bundle's codes of OpenClipart's database images, replicated with 5 % bit noise,
    each one's bucket among ``buckets`` centers fitted on (a sample of) them, the centers, and the held-out
    texts' features (the queries): (codes, buckets, centers, query features)."""
    from bench.http_load import replicate
    from index.centers import fit_centers, head_signs, nearest_centers
    from training.datasets import load_dataset
    from training.featurize.pipeline import bundle_features_kind, featurize

    features = featurize(load_dataset(bundle.manifest.training.dataset), kind=bundle_features_kind(bundle.manifest))
    _, q_text, _ = features.part("query")
    d_image, _, d_labels = features.part("database")
    codes, _ = replicate(bundle.packed_codes("image", d_image), d_labels, bundle.bits, n, flip=0.05)
    head = head_signs(codes, bundle.head_bits)
    rng = np.random.default_rng(0)
    centers, _ = fit_centers(head[rng.choice(n, size=min(n, 200_000), replace=False)], buckets, rng, balance=balance)
    return codes, nearest_centers(head, centers)[:, 0], centers, q_text


def prepare(n: int, buckets: int, data: Path) -> None:
    """The codes, centers and queries the children share, as .npy files."""
    from index.bundle import load_bundle
    from service.settings import DEFAULT_BUNDLE

    bundle = load_bundle(DEFAULT_BUNDLE)
    codes, assignment, centers, q_text = replicated_corpus(bundle, n, buckets)
    np.save(data / "codes.npy", codes)
    np.save(data / "buckets.npy", assignment)
    np.save(data / "centers.npy", centers)
    np.save(data / "queries.npy", bundle.packed_codes("text", q_text))


def fill(client, data: Path, index_name: str = INDEX_NAME, n: int | None = None) -> dict:
    """Write the first ``n`` items (all by default) into Redis with their labels (``RedisStore.copy``),
    as a re-bucket or preload does; Redis's memory per item."""
    from index.store import RedisStore

    codes, buckets = np.load(data / "codes.npy")[:n], np.load(data / "buckets.npy")[:n]
    store = RedisStore(client, index_name, BUNDLE_ID)
    store.save_centers(np.load(data / "centers.npy"), CENTERS_VERSION)
    store.activate()
    base = client.info("memory")["used_memory"]
    for start in range(0, len(codes), _FILL_BATCH):
        stop = min(len(codes), start + _FILL_BATCH)
        ids = [f"openclipart/item-{i:07d}" for i in range(start, stop)]
        metadata = [json.dumps({"title": "clip art", "category": f"c{i % CATEGORIES}"}) for i in range(start, stop)]
        store.copy("image", ids, buckets[start:stop], np.arange(start + 1, stop + 1), codes[start:stop], metadata)
    n = len(codes)
    entries = client.memory_usage(store.keys.entries["image"], samples=0) or 0
    return {"redis_bytes_per_item": round((client.info("memory")["used_memory"] - base) / n, 1),
            "of_which_entries": round(entries / n, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--baseline", default="main", help="git ref whose index is the baseline")
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=8)
    parser.add_argument("--reloads", type=int, default=3, help="reloads per opening child (median taken)")
    parser.add_argument("--out", type=Path, default=Path("var/bench/memory.json"))
    parser.add_argument("--child", choices=["codes", "before", "after"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.data, args.redis_url, args.probe, args.reloads)))
        return

    from index.redis_server import RedisServer

    report = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_tree(args.baseline, Path(tmp) / "baseline")
        for n in args.items:
            data = Path(tmp) / f"data-{n}"
            data.mkdir()
            prepare(n, args.buckets, data)
            (data / "redis").mkdir()
            server = RedisServer(data / "redis").start()
            try:
                fill(server.client(), data, WARM_UP_INDEX, WARM_UP_ITEMS)
                redis_side = fill(server.client(), data)
                rows = {
                    "codes": run_child("codes", ROOT, data, server.url, args.probe, 1),
                    "before": run_child("before", baseline, data, server.url, args.probe, args.reloads),
                    "after": run_child("after", ROOT, data, server.url, args.probe, args.reloads),
                }
            finally:
                server.stop()
            row = {"items": n, "baseline": args.baseline, "redis": redis_side, **rows}
            before, after, codes = rows["before"], rows["after"], rows["codes"]
            row["ratios"] = {
                "rss_after_over_codes_alone": round(after["rss_bytes_per_item"] / codes["rss_bytes_per_item"], 2),
                "rss_before_over_after": round(before["rss_bytes_per_item"] / after["rss_bytes_per_item"], 1),
                "reload_before_over_after": round(before["build_or_reload_s"] / after["build_or_reload_s"], 1),
                "reload_medians_before_over_after": round(before["reload_s_median"] / after["reload_s_median"], 1),
                "search_p99_after_minus_before_ms": round(after["search"]["p99_ms"] - before["search"]["p99_ms"], 3),
                "filtered_p99_after_minus_before_ms": round(
                    after["filtered"]["p99_ms"] - before["filtered"]["p99_ms"], 3
                ),
            }
            print(json.dumps(row, indent=2), flush=True)
            report.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
