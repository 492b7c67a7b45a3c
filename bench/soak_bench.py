"""Soak benchmark: mixed ingest + search against a real service for minutes, on loopback.

    python -m bench.soak_bench --minutes 5

Set-up: a redis-server of its own (temporary directory, AOF ``appendfsync always``) and ``python -m
service`` on the default bundle, both on free loopback ports; a pool of ``--pool`` items (half images,
half texts, as feature vectors) is ingested first. Load: ``--clients`` threads, each with a keep-alive
connection, paced to ``--rate`` requests/s in all, mixing searches (feature vectors both ways, raw text),
batch ingests (16 items, re-inserting ids of the pool, so the index stays the same size), reads and
deletes (a deleted id is re-inserted by a later ingest). Each client owns its share of the ids, so a
read or delete never races another client's delete: every answer must be a 2xx.

Reported: requests and errors per operation, latency percentiles, the service's RSS (VmRSS of
/proc/<pid>/status) sampled every ``--sample`` seconds, and the memory check: after a warm-up
(``--warmup`` seconds), RSS may grow by at most ``--rss-bound-mb`` MB plus ``--item-kib`` KiB per item
the index gained since (the pool is fixed, so that term is about zero). Exit status 1 when any request
failed, the RSS check failed, or the service's in-memory index and Redis disagree at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from index.bundle import read_manifest
from index.redis_server import RedisServer, free_port
from index.store import RedisStore
from service.settings import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
KEY = "soak-key"
INDEX = "soak"
DIMS = {"image": 1280, "text": 384}  # the default bundle's feature dimensions
BATCH = 16
MIX = {  # operation → share of requests
    "search_t2i_features": 0.30,
    "search_t2i_text": 0.15,
    "search_i2t_features": 0.25,
    "ingest_batch": 0.15,
    "get_item": 0.10,
    "delete_item": 0.05,
}


def features(rng: np.random.Generator, modality: str) -> list[float]:
    x = np.zeros(DIMS[modality])
    nonzero = rng.choice(DIMS[modality], 6, replace=False)
    x[nonzero] = 1.0 if modality == "text" else rng.random(6)
    return x.tolist()


def item(rng: np.random.Generator, i: int, generation: int) -> dict:
    modality = "image" if i % 2 == 0 else "text"
    return {
        "id": f"soak/{i}",
        "modality": modality,
        "features": features(rng, modality),
        "metadata": {"i": i, "generation": generation, "title": f"item {i} written {generation} times"},
    }


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Connection:
    """A keep-alive HTTP connection. A request on a reused connection that the server had closed
    meanwhile (its keep-alive timeout) is sent again once on a new connection, and counted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None
        self.resent = 0

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        headers = {"X-API-Key": KEY}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        for attempt in (1, 2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.conn.close()
                self.conn = None
                if not reused or attempt == 2:
                    raise
                self.resent += 1
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                raise
        raise AssertionError("unreachable")


class Client(threading.Thread):
    def __init__(self, number: int, clients: int, port: int, pool: int, rate: float, vocabulary: list[str]) -> None:
        super().__init__(daemon=True, name=f"client-{number}")
        self.rng = np.random.default_rng(1000 + number)
        self.random = random.Random(number)
        self.connection = Connection(port)
        self.ids = list(range(number, pool, clients))  # this client's share of the pool
        self.present = set(self.ids)
        self.generation = 1
        self.interval = clients / rate
        self.vocabulary = vocabulary
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, list[str]] = defaultdict(list)
        self.halt = threading.Event()

    def _request(self) -> tuple[str, str, str, dict | None, tuple[int, ...]]:
        operation = self.random.choices(list(MIX), weights=list(MIX.values()))[0]
        if operation == "search_t2i_features":
            body = {"features": features(self.rng, "text"), "k": 10}
            return operation, "POST", "/v1/search/text-to-image", body, (200,)
        if operation == "search_t2i_text":
            body = {"text": " ".join(self.random.sample(self.vocabulary, 3)), "k": 10}
            return operation, "POST", "/v1/search/text-to-image", body, (200,)
        if operation == "search_i2t_features":
            body = {"features": features(self.rng, "image"), "k": 10, "probe": self.random.choice([None, 4, 16])}
            return operation, "POST", "/v1/search/image-to-text", body, (200,)
        if operation == "ingest_batch":
            self.generation += 1
            chosen = self.random.sample(self.ids, BATCH)
            self.present.update(chosen)
            body = {"items": [item(self.rng, i, self.generation) for i in chosen]}
            return operation, "POST", "/v1/items:batch", body, (200,)
        target = self.random.choice(sorted(self.present))
        if operation == "get_item":
            return operation, "GET", f"/v1/items/soak/{target}", None, (200,)
        self.present.discard(target)
        return operation, "DELETE", f"/v1/items/soak/{target}", None, (204,)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.halt.is_set():
            next_at += self.interval
            operation, method, path, body, expected = self._request()
            started = time.perf_counter()
            try:
                status, raw = self.connection.request(method, path, body)
            except (OSError, http.client.HTTPException) as exc:
                self.errors[operation].append(f"{type(exc).__name__}: {exc}")
            else:
                self.latencies[operation].append(time.perf_counter() - started)
                if status not in expected or (operation == "ingest_batch" and json.loads(raw)["stored"] != BATCH):
                    self.errors[operation].append(f"{status} {raw[:200]!r}")
            delay = next_at - time.monotonic()
            if delay > 0:
                self.halt.wait(delay)
            else:
                next_at = time.monotonic()  # behind schedule: go on at once, do not burst to catch up


def wait_ready(port: int, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited with {process.returncode}")
        try:
            if Connection(port).request("GET", "/readyz")[0] == 200:
                return
        except (OSError, http.client.HTTPException):
            time.sleep(0.2)
    raise RuntimeError("service did not become ready")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="soak duration after the pool is ingested")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second, all clients together")
    parser.add_argument("--pool", type=int, default=4000, help="item ids in use (half images, half texts)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline is taken")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--rss-bound-mb", type=float, default=32.0, help="allowed RSS growth after warm-up")
    parser.add_argument("--item-kib", type=float, default=4.0, help="allowed RSS per item gained after warm-up")
    args = parser.parse_args()
    duration = args.minutes * 60
    vocabulary = read_manifest(DEFAULT_BUNDLE).modalities.text.featurizer.vocabulary

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("XMHASH_")}
        env |= {"REDIS_URL": redis.url, "XMHASH_API_KEY": KEY, "XMHASH_INDEX_NAME": INDEX, "XMHASH_PORT": str(port)}
        env["XMHASH_DEMO_CORPUS"] = "false"  # only the soak's own writes, and no background ingestion
        log = open(Path(tmp) / "service.log", "wb")  # noqa: SIM115 (closed in finally)
        service = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=log)
        try:
            wait_ready(port, service)
            print(f"service pid {service.pid} on 127.0.0.1:{port}, redis {redis.url}; RSS {rss_kib(service.pid)} KiB")
            setup = Connection(port)
            rng = np.random.default_rng(0)
            started = time.perf_counter()
            for start in range(0, args.pool, 64):
                items = [item(rng, i, 1) for i in range(start, min(args.pool, start + 64))]
                status, raw = setup.request("POST", "/v1/items:batch", {"items": items})
                assert status == 200 and json.loads(raw)["stored"] == len(items), raw
            print(f"pool of {args.pool} items ingested in {time.perf_counter() - started:.1f} s")

            clients = [Client(n, args.clients, port, args.pool, args.rate, vocabulary) for n in range(args.clients)]
            samples: list[tuple[float, int, int]] = []  # (seconds since start, RSS KiB, items in the index)
            began = time.monotonic()
            for client in clients:
                client.start()
            while (elapsed := time.monotonic() - began) < duration:
                items_now = json.loads(setup.request("GET", "/v1/models")[1])["index"]["items"]
                samples.append((elapsed, rss_kib(service.pid), sum(items_now.values())))
                time.sleep(min(args.sample, max(0.0, duration - elapsed)))
            for client in clients:
                client.halt.set()
            for client in clients:
                client.join(60)
            soak_seconds = time.monotonic() - began
            items_now = json.loads(setup.request("GET", "/v1/models")[1])["index"]["items"]
            samples.append((soak_seconds, rss_kib(service.pid), sum(items_now.values())))
            store = RedisStore(redis.client(), INDEX, json.loads(setup.request("GET", "/v1/models")[1])["bundle_id"])
            store = store.at(store.active_generation())
            in_redis = {m: store.client.hlen(store.keys.items[m]) for m in ("image", "text")}
        finally:
            service.terminate()
            service.wait(30)
            log.close()
            redis.stop()

    return report(args, clients, samples, soak_seconds, items_now, in_redis)


def report(args, clients: list[Client], samples, soak_seconds: float, in_memory: dict, in_redis: dict) -> int:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    for client in clients:
        for operation, values in client.latencies.items():
            latencies[operation] += values
        for operation, values in client.errors.items():
            errors[operation] += values
    total = sum(len(v) for v in latencies.values()) + sum(len(v) for v in errors.values())
    error_count = sum(len(v) for v in errors.values())
    print(f"\nsoak: {soak_seconds / 60:.2f} min, {args.clients} clients paced to {args.rate:g} req/s, pool {args.pool}")
    resent = sum(client.connection.resent for client in clients)
    print(f"requests {total} ({total / soak_seconds:.1f}/s), errors {error_count}")
    print(f"(requests sent again on a new connection after a keep-alive close: {resent})")
    print("\n| operation | requests | errors | p50 ms | p95 ms | p99 ms | max ms |\n|---|---|---|---|---|---|---|")
    for operation in MIX:
        values = latencies[operation]
        print(
            f"| {operation} | {len(values) + len(errors[operation])} | {len(errors[operation])} | "
            f"{percentile(values, 50):.1f} | {percentile(values, 95):.1f} | {percentile(values, 99):.1f} | "
            f"{max(values) * 1e3 if values else float('nan'):.1f} |"
        )
    for operation, messages in errors.items():
        for message in messages[:5]:
            print(f"  error {operation}: {message}")

    print("\n| t (s) | RSS (MiB) | items in index |\n|---|---|---|")
    every = max(1, round(30 / args.sample))
    for t, rss, items in samples[::every] + ([samples[-1]] if (len(samples) - 1) % every else []):
        print(f"| {t:.0f} | {rss / 1024:.1f} | {items} |")
    warm = [s for s in samples if s[0] >= args.warmup]
    if len(warm) < 6:
        print("\nRSS check: not enough samples after warm-up (run longer)")
        return 1
    baseline_rss = statistics.median(s[1] for s in warm[:3])
    final_rss = statistics.median(s[1] for s in warm[-3:])
    gained_items = max(0, warm[-1][2] - warm[0][2])
    growth_mb = (final_rss - baseline_rss) / 1024
    bound_mb = args.rss_bound_mb + gained_items * args.item_kib / 1024
    peak_mb = max(s[1] for s in samples) / 1024
    rss_ok = growth_mb <= bound_mb
    print(
        f"\nRSS after warm-up ({args.warmup:g} s) {baseline_rss / 1024:.1f} MiB → end {final_rss / 1024:.1f} MiB "
        f"(peak {peak_mb:.1f}): growth {growth_mb:+.1f} MiB; bound {args.rss_bound_mb:g} MiB + "
        f"{args.item_kib:g} KiB × {gained_items} items gained = {bound_mb:.1f} MiB → {'PASS' if rss_ok else 'FAIL'}"
    )
    consistent = in_memory == in_redis
    print(f"items at the end: in memory {in_memory}, in Redis {in_redis} → {'PASS' if consistent else 'FAIL'}")
    return 0 if error_count == 0 and rss_ok and consistent else 1


if __name__ == "__main__":
    sys.exit(main())
