"""How soon another worker process applies an acknowledged write (the change feed's lag).

    python -m bench.feed_bench --writes 2000

A writer process upserts one item per batch and records when each write was acknowledged; a follower
process (as a service worker does) blocks on the feed and records when it has applied each change.
Lag = applied by the follower − acknowledged to the writer, on the machine-wide monotonic clock; it is
negative when the follower applied a write before the writer's call returned. The baseline of the same
run is one Redis round trip (PING) from a third process.

Then the feed's memory in Redis at its cap: ``--memory-batches`` batches of 256 items (64-bit codes,
small metadata) written through one index, then ``MEMORY USAGE`` of the stream, which Redis keeps at
about ``FEED_LENGTH`` entries whatever the index size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

import numpy as np

from index.centers import fit_centers
from index.code_space import CodeSpace
from index.engine import HashIndex, Item
from index.redis_server import RedisServer
from index.store import FEED_LENGTH

BITS = 64


def _open(url: str) -> HashIndex:
    import redis

    rng = np.random.default_rng(0)
    centers, _ = fit_centers(np.where(rng.random((1000, BITS)) < 0.5, -1, 1).astype(np.int8), 64, rng)
    return HashIndex.open(redis.Redis.from_url(url), "feed", CodeSpace("bench", BITS, centers, "v1"))


def _write(url: str, writes: int, out: mp.Queue) -> None:
    index = _open(url)
    codes = np.random.default_rng(1).integers(0, 256, size=(writes, BITS // 8), dtype=np.uint8)
    acknowledged = []
    for i in range(writes):
        index.add([Item(f"item{i}", "image", codes[i], {"i": i})])
        acknowledged.append((index.generation.applied, time.monotonic()))
    out.put(acknowledged)


def _follow(url: str, writes: int, ready: mp.Event, out: mp.Queue) -> None:
    index = _open(url)
    ready.set()
    applied = []
    while index.generation.applied < writes:
        if index.follow(500):
            applied.append((index.generation.applied, time.monotonic()))
    out.put(applied)


def _feed_memory(url: str, batches: int, size: int = 256) -> dict:
    import redis

    index = _open(url)
    rng = np.random.default_rng(2)
    for b in range(batches):
        codes = rng.integers(0, 256, size=(size, BITS // 8), dtype=np.uint8)
        index.add([Item(f"m{b}-{i}", "text", codes[i], {"title": "clip art"}) for i in range(size)])
    client, key = redis.Redis.from_url(url), index.store.keys.feed
    entries, used = client.xlen(key), client.memory_usage(key, samples=0)
    return {"batches": batches, "batch_size": size, "feed_entries": entries, "feed_bytes": used,
            "feed_bytes_per_item": round(used / (entries * size), 1)}  # fmt: skip


def _round_trip_ms(url: str, n: int = 2000) -> float:
    import redis

    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for _ in range(n):
        client.ping()
    return (time.perf_counter() - started) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--memory-batches", type=int, default=FEED_LENGTH + 100)
    parser.add_argument("--out", type=Path, default=Path("var/bench/feed.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            _open(server.url)  # creates the index before either process attaches
            ping_ms = _round_trip_ms(server.url)
            spawn = mp.get_context("spawn")  # fresh processes: OpenMP (FAISS) does not survive fork()
            ready, acks, applies = spawn.Event(), spawn.Queue(), spawn.Queue()
            follower = spawn.Process(target=_follow, args=(server.url, args.writes, ready, applies))
            follower.start()
            ready.wait(60)
            writer = spawn.Process(target=_write, args=(server.url, args.writes, acks))
            writer.start()
            acknowledged, applied = acks.get(), applies.get()
            writer.join()
            follower.join()
            memory = _feed_memory(server.url, args.memory_batches)
        finally:
            server.stop()
    seqs = np.array([seq for seq, _ in applied])
    times = np.array([t for _, t in applied])
    lags = [(times[np.searchsorted(seqs, seq)] - at) * 1e3 for seq, at in acknowledged]
    p50, p99 = np.percentile(lags, [50, 99])
    report = {
        "writes": args.writes,
        "lag_ms_p50": round(float(p50), 3),
        "lag_ms_p99": round(float(p99), 3),
        "lag_ms_max": round(float(np.max(lags)), 3),
        "redis_round_trip_ms": round(ping_ms, 3),
        "p50_vs_round_trip": round(float(p50) / ping_ms, 2),
        "p99_vs_round_trip": round(float(p99) / ping_ms, 2),
        "memory": memory,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
