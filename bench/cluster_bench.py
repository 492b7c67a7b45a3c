"""The index sharded over a Redis Cluster, in one run: bulk import items/s with 1, 2 and 3 shards, Redis
memory per item with S shards against S = 1, and search latency (p50/p99) with S = 3 against S = 1.

    python -m bench.cluster_bench --items 500000 --rounds 3 --out docs/data/cluster_bench.json

One Redis Cluster of 3 masters on loopback (``tests.support.redis_cluster``; no replicas here: the rows
measure the write path, not replication; AOF with ``appendfsync always`` as deployed) and, for the
reference row, one plain redis-server. Each row imports ``--items`` random packed codes of the default
bundle (ids and ``{"i": n}`` metadata) into a fresh index with ``index.bulk_import.import_chunks`` (chunks
of ``--chunk``; each chunk's shard parts written at once, one connection per node), timed around that
call. Memory: the masters' ``used_memory`` after the import minus before, per item. Search: after the
import rounds, the plain S = 1, cluster S = 1 and cluster S = 3 indexes imported again and opened from
Redis by ``HashIndex.open``, then ``--queries`` single-code queries (k = 10, probe 8) sent to the three in
turn, query by query, each timed (ranking in memory + the hits' lookup: over S = 3, one pipeline, one
round trip per node). CPU: user + system seconds of every redis-server and of this process during each import
(``/proc/<pid>/stat``), which shows where a 2-core machine is bound. The four configurations take turns,
``--rounds`` times (every Redis emptied after each), so load from elsewhere on the machine slows them
alike; the summary is each one's median.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from index.bulk_import import Chunk, import_chunks, open_store
from index.bundle import load_bundle
from index.engine import HashIndex
from index.redis_server import RedisServer
from tests.support.redis_cluster import RedisClusterServer

ROOT = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def used_memory(clients: list) -> int:
    return sum(int(client.info("memory")["used_memory"]) for client in clients)


def chunks(codes: np.ndarray, prefix: str, chunk: int):
    for number, start in enumerate(range(0, len(codes), chunk)):
        rows = range(start, min(start + chunk, len(codes)))
        ids = [f"{prefix}{i}" for i in rows]
        metadata = [b'{"i": %d}' % i for i in rows]
        yield Chunk(str(number), "image", ids, codes[start : rows.stop], metadata)


def imported(client, node_clients: list, pids: list[int], bundle, shards: int, codes: np.ndarray, args) -> dict:
    """Import into a fresh index of ``shards`` shards; its name, rate, memory and CPU."""
    name = f"bench-s{shards}-{time.monotonic_ns()}"
    store = open_store(client, name, bundle, shards)
    before_memory = used_memory(node_clients)
    before_cpu = {pid: cpu_seconds(pid) for pid in pids}
    started = time.perf_counter()
    summary = import_chunks(store, "bench", chunks(codes, "item", args.chunk), progress=False)
    seconds = time.perf_counter() - started
    cpu = {pid: round(cpu_seconds(pid) - before_cpu[pid], 2) for pid in pids}
    memory = used_memory(node_clients) - before_memory
    return {
        "index": name,
        "shards": shards,
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the machine meanwhile
        "items": summary.written_items,
        "import_seconds": round(seconds, 2),
        "items_per_second": round(summary.written_items / seconds),
        "memory_bytes_per_item": round(memory / summary.written_items, 1),
        "cpu_seconds": {"importer": cpu.pop(os.getpid()), "redis_servers": list(cpu.values())},
    }


def search_latencies(indexes: dict[str, HashIndex], codes: np.ndarray, queries: int) -> dict[str, dict]:
    """Single-code queries (k = 10, probe 8) sent to the indexes in turn, query by query, so the machine's
    other load falls on all alike; each index's p50/p90/p99 in ms."""
    chosen = codes[np.random.default_rng(1).choice(len(codes), queries, replace=False)]
    latencies: dict[str, list[float]] = {name: [] for name in indexes}
    for query in chosen:
        for name, index in indexes.items():
            begin = time.perf_counter()
            index.search("image", query[None], k=10, probe=8)
            latencies[name].append(time.perf_counter() - begin)
    return {
        name: {f"p{q}_ms": round(float(np.percentile(np.array(found) * 1000, q)), 3) for q in (50, 90, 99)}
        for name, found in latencies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default", help="whose code length")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    codes = np.random.default_rng(0).integers(0, 256, (args.items, bundle.bits // 8), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        cluster = RedisClusterServer(Path(tmp) / "cluster", masters=3, replicas=0).start()
        try:
            plain = server.client()
            client = cluster.client()
            nodes = [node.redis_connection for node in client.get_primaries()]
            pids = [os.getpid(), *(process.pid for process in cluster.processes.values())]
            configurations = {"plain redis-server, S=1": (plain, [plain], [os.getpid(), server.process.pid], 1)}
            configurations |= {f"cluster of 3 masters, S={s}": (client, nodes, pids, s) for s in (1, 2, 3)}
            for _ in range(args.rounds):
                for name, (to, measured, processes, shards) in configurations.items():
                    rows.append(
                        {"configuration": name} | imported(to, measured, processes, bundle, shards, codes, args)
                    )
                    print(json.dumps(rows[-1]), flush=True)
                    for node in measured:
                        node.flushall()
            searched = {}
            for name in ("plain redis-server, S=1", "cluster of 3 masters, S=1", "cluster of 3 masters, S=3"):
                to, measured, processes, shards = configurations[name]
                index_name = imported(to, measured, processes, bundle, shards, codes, args)["index"]
                searched[name] = HashIndex.open(to, index_name, bundle.code_space)
            search = search_latencies(searched, codes, args.queries)
            print(json.dumps(search), flush=True)
        finally:
            cluster.stop()
            server.stop()
    summary = {name: median(rows, name) for name in configurations}
    print(json.dumps(summary, indent=2))
    if args.out:
        report = {"cores": os.cpu_count(), "items": args.items, "import_median": summary, "search": search,
                  "import_rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n")


def median(rows: list[dict], name: str) -> dict:
    """A configuration's median of each number over its rounds."""
    mine = [r for r in rows if r["configuration"] == name]
    keys = ["items_per_second", "memory_bytes_per_item"]
    result = {key: float(np.median([r[key] for r in mine])) for key in keys}
    result["cpu_seconds_per_item_us"] = {
        "importer": round(float(np.median([r["cpu_seconds"]["importer"] / r["items"] for r in mine])) * 1e6, 2),
        "redis_servers": round(
            float(np.median([sum(r["cpu_seconds"]["redis_servers"]) / r["items"] for r in mine])) * 1e6, 2
        ),
    }
    return result


if __name__ == "__main__":
    main()
