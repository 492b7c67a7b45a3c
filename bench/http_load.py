"""Loading the service over HTTP on loopback: Redis preloaded with replicated codes, ``python -m service``
started with N workers, wrk as the load generator, and where the load went.

Shared by ``bench.http_bench`` (this 2-core host, the corpus at hand) and ``bench.scaling_bench`` (a
16-core host that has neither the corpus nor the training code): nothing here imports ``training``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np

from index.centers import route
from index.codes import pack_signs, unpack_signs
from index.redis_server import free_port
from index.store import RedisStore

LUA = Path(__file__).with_name("wrk_bodies.lua")


def replicate(codes: np.ndarray, labels: np.ndarray, bits: int, n: int, flip: float, seed: int = 0):
    """``n`` codes: copies of the real ones, each bit flipped with probability ``flip``."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(codes), n)
    signs = unpack_signs(codes[source], bits)
    signs[rng.random(signs.shape) < flip] *= -1
    return pack_signs(signs), labels[source]


def preload(store: RedisStore, bundle, database: np.ndarray, labels: np.ndarray, n: int) -> float:
    """Write n image codes, replicated from the packed ``database`` codes with bit noise, straight into
    Redis (the service rebuilds from it); seconds."""
    codes, _ = replicate(database, labels, bundle.bits, n, flip=0.05)
    buckets = route(codes, bundle.centers)[:, 0]
    store.save_centers(bundle.centers, bundle.centers_version)  # as the service does for a new index
    store.activate()
    started = time.perf_counter()
    for start in range(0, n, 5000):
        stop = min(n, start + 5000)
        ids = [f"img:{i}" for i in range(start, stop)]
        metadata = [json.dumps({"n": i}) for i in range(start, stop)]
        store.copy("image", ids, buckets[start:stop], np.arange(start + 1, stop + 1), codes[start:stop], metadata)
    return time.perf_counter() - started


def wait_ready(url: str, workers: int, items: int, timeout: float) -> float:
    """Seconds until every worker (by the pid /v1/models reports) holds the preloaded items."""
    started = time.perf_counter()
    loaded: set[int] = set()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as response:
                body = json.load(response)
            if body["index"]["items"]["image"] >= items:
                loaded.add(body["worker"])
            if len(loaded) == workers:
                return time.perf_counter() - started
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("service did not become ready")


def run_wrk(url: str, bodies: Path | None, duration: int, connections: int, threads: int = 1) -> dict:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    if bodies is not None:
        command += ["-s", str(LUA), url, "--", str(bodies)]
    else:
        command.append(url)
    wrk = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(min(1.0, duration / 2))
    spread = connections_per_worker(int(url.split(":")[2].split("/")[0]))
    output, _ = wrk.communicate()
    percent = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "qps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": percent.get("50"),
        "p99": percent.get("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "connections_per_worker": spread,
    }


def connections_per_worker(port: int) -> list[int]:
    """How the kernel handed wrk's connections to the worker processes (``ss``): each worker keeps the
    connections it accepted, so an uneven split leaves one worker loaded and the other idle."""
    try:
        listing = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True
        ).stdout
    except FileNotFoundError:  # a host without iproute2: the split is not reported
        return []
    return sorted(Counter(re.findall(r"pid=(\d+)", listing)).values(), reverse=True)


def start_service(
    redis_url: str, probe: int, bundle: Path, workers: int, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """``python -m service`` with ``workers`` processes on a free port; ``settings``: more ``XMHASH_*``."""
    port = free_port()
    env = (
        os.environ
        | {
            "REDIS_URL": redis_url,
            "XMHASH_BUNDLE_PATH": str(bundle),
            "XMHASH_INDEX_NAME": "bench",
            "XMHASH_PORT": str(port),
            "XMHASH_API_KEY": "bench",
            "XMHASH_DEFAULT_PROBE": str(probe),
            "XMHASH_WORKERS": str(workers),
            "XMHASH_ACCESS_LOG": "false",  # a log line per request costs ~3 % CPU; /metrics counts requests
            "XMHASH_DEMO_CORPUS": "false",  # only the benchmark's items, and no background ingestion
        }
        | (settings or {})
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return process, f"http://127.0.0.1:{port}"
