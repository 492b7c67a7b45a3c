"""What the HA topology costs and gives on this machine (docs/ha.md): search QPS through HAProxy with 1 vs 2
service replicas, and the write latency that ``WAIT 1`` adds beside ``WAIT 0``, in the same run.

    python -m bench.ha_bench --bundle models/bow-v1 --items 100000 --rounds 3 --duration 10

Set-up: a Redis primary and one replica (``deploy/ha/redis.conf``); the bundle's codes of the real
OpenClipart database images, replicated with bit noise to ``--items`` (``bench.http_bench.preload``); two
service replicas (``python -m service``, one worker each, separate processes and ports), the first with
``XMHASH_REDIS_WAIT_REPLICAS=0``, the second with 1; HAProxy (``deploy/ha/haproxy.cfg``) in front.

- Search: wrk through HAProxy on text → image queries given as feature vectors (the query items' texts),
  ``--connections`` connections, in alternating rounds: the second replica in maintenance (1 replica),
  then both ready (2 replicas). QPS per round, medians and their ratio.
- Writes: ``POST /v1/items:batch`` of 16 feature-vector items, one at a time, alternating between the two
  replicas (WAIT 0 and WAIT 1 against the same primary and replica): p50 and p99 latency of each. The same
  below HTTP: ``HashIndex.add`` of 16 real codes through a client with WAIT 0 and one with WAIT 1,
  alternating, which leaves out the featurizing and HTTP that dominate the first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.http_bench import database_image_features, preload, query_bodies, run_wrk, wait_ready
from index.bundle import load_bundle
from index.engine import HashIndex, Item
from index.redis_connection import RedisTarget, connect
from index.redis_server import RedisServer
from index.store import RedisStore
from tests.support.faults_service import KEY, ROOT, Service, call
from tests.support.ha import HA, HAProxy
from training.datasets.openclipart import load_openclipart

WRITE_BATCH = 16


def _replica_of(primary: RedisServer, directory: Path) -> RedisServer:
    replica = RedisServer(directory, HA / "redis.conf", ["--replicaof", "127.0.0.1", str(primary.port)]).start()
    deadline = time.monotonic() + 60
    while replica.client().info("replication")["master_link_status"] != "up":
        assert time.monotonic() < deadline, "the replica did not sync"
        time.sleep(0.1)
    return replica


def search_rounds(balancer: HAProxy, bodies: Path, rounds: int, duration: int, connections: int) -> dict:
    """Alternating wrk rounds through HAProxy: 1 replica (s2 in maintenance), then 2."""
    url = f"http://127.0.0.1:{balancer.port}/v1/search/text-to-image"
    qps: dict[str, list[float]] = {"1": [], "2": []}
    for _ in range(rounds):
        for replicas, state in (("1", "maint"), ("2", "ready")):
            balancer.command(f"set server services/s2 state {state}")
            balancer.wait_up({"s1"} if state == "maint" else {"s1", "s2"})
            result = run_wrk(url, bodies, duration, connections)
            assert result["non_2xx"] == 0, result
            qps[replicas].append(result["qps"])
            print(f"search through HAProxy, {replicas} replica(s): {json.dumps(result)}", flush=True)
    medians = {replicas: statistics.median(values) for replicas, values in qps.items()}
    return {"qps": qps, "median_qps": medians, "ratio_2_vs_1": round(medians["2"] / medians["1"], 2)}


def write_latencies(services: dict[str, Service], text_dim: int, batches: int) -> dict:
    """Batch writes alternating between the replicas; per WAIT setting, p50/p99 in ms."""
    rng = np.random.default_rng(0)
    seconds: dict[str, list[float]] = {wait: [] for wait in services}
    for b in range(batches):
        for wait, service in services.items():
            items = [{"id": f"w{wait}-{b}-{i}", "modality": "text", "features": rng.random(text_dim).round(3).tolist()}
                     for i in range(WRITE_BATCH)]  # fmt: skip
            started = time.perf_counter()
            reply = call(service.port, "POST", "/v1/items:batch", {"items": items}, key=KEY)
            seconds[wait].append(time.perf_counter() - started)
            assert reply.status == 200, reply
    return _percentiles(seconds)


def index_write_latencies(url: str, bundle, codes: np.ndarray, batches: int) -> dict:
    """``HashIndex.add`` of WRITE_BATCH codes, alternating WAIT 0 and WAIT 1; per setting, p50/p99 in ms."""
    clients = {wait: connect(RedisTarget(url, wait_replicas=int(wait))) for wait in ("0", "1")}
    indexes = {wait: HashIndex.open(client, "bench-index", bundle.code_space) for wait, client in clients.items()}
    seconds: dict[str, list[float]] = {wait: [] for wait in indexes}
    for b in range(batches):
        for wait, index in indexes.items():
            rows = range(b * WRITE_BATCH, (b + 1) * WRITE_BATCH)
            items = [Item(f"w{wait}-{r}", "image", codes[r % len(codes)]) for r in rows]
            started = time.perf_counter()
            index.add(items)
            seconds[wait].append(time.perf_counter() - started)
    return _percentiles(seconds)


def _percentiles(seconds: dict[str, list[float]]) -> dict:
    return {
        f"wait_{wait}": {
            "p50_ms": round(float(np.percentile(values, 50)) * 1000, 2),
            "p99_ms": round(float(np.percentile(values, 99)) * 1000, 2),
            "batches": len(values),
        }
        for wait, values in seconds.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "bow-v1")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--writes", type=int, default=300, help="write batches per WAIT setting")
    parser.add_argument("--out", type=Path, default=Path("var/bench/ha.json"))
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    corpus = load_openclipart()
    database = corpus.split.database
    report: dict = {"items": args.items, "bundle": bundle.bundle_id, "connections": args.connections}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        primary = RedisServer(directory / "primary", HA / "redis.conf").start()
        replica = _replica_of(primary, directory / "replica")
        processes: list = []
        try:
            store = RedisStore(primary.client(), "bench", bundle.bundle_id)
            images = database_image_features(bundle, corpus)[database]
            preload(store, bundle, images, corpus.labels[database], args.items)
            env = {"XMHASH_BUNDLE_PATH": str(args.bundle), "XMHASH_ACCESS_LOG": "false"}
            services = {
                wait: Service(
                    primary.url, directory, index_name="bench", env=env | {"XMHASH_REDIS_WAIT_REPLICAS": wait}
                )
                for wait in ("0", "1")
            }
            processes += services.values()
            for service in services.values():
                service.start(wait=False)
            for service in services.values():
                wait_ready(f"http://127.0.0.1:{service.port}", 1, args.items, 600)
            balancer = HAProxy(directory, (services["0"].port, services["1"].port)).start()
            processes.append(balancer)
            bodies = directory / "queries.jsonl"
            _, requests = query_bodies(bundle, corpus, corpus.split.query[:200])["features"]
            bodies.write_text("\n".join(json.dumps(body) for body in requests))
            report["search"] = search_rounds(balancer, bodies, args.rounds, args.duration, args.connections)
            report["writes"] = write_latencies(services, bundle.input_dim("text"), args.writes)
            print("writes:", json.dumps(report["writes"]), flush=True)
            codes = bundle.packed_codes("image", images)
            report["index_writes"] = index_write_latencies(primary.url, bundle, codes, args.writes * 3)
            print("index writes:", json.dumps(report["index_writes"]), flush=True)
        finally:
            for process in processes:
                process.stop()
            replica.stop()
            primary.stop()
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
