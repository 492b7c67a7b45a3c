"""Ingestion throughput: the batch endpoint (JSON and msgpack bodies) beside today's path, and the bulk
import beside a raw Redis pipeline writing the same keys, all in one run on one redis-server of its own
(AOF, ``appendfsync always``, as deployed).

    python -m bench.ingest_bench --batches 20 --import-items 1000000

Batch endpoint: three ``python -m service`` processes (one worker each, the default bundle,
``XMHASH_MAX_BATCH_ITEMS`` 1,000) each receive ``--batches`` batches of 1,000 feature items of
``--modality`` (random vectors, numbers written with 3 decimals as bench/http_bench.py does), bodies built
before the clock starts, sent in rounds to the three in turn (a round: ``--clients`` batches at once, on
as many connections, to one service; rows take turns, so a busy machine slows every row alike); items/s
from each row's median round time. Rows: this checkout with a JSON body and with a
msgpack body (float32 bytes), and the baseline, *today's path*: the same service and the same kind of
JSON bodies run from the tree of ``--baseline-ref`` (default ``main``, exported with ``git archive`` into
a temporary directory, with this checkout's built files that git does not hold: the featurizer graphs
and the C scan kernel).

Bulk import: ``--import-items`` random packed codes (.npy) with a JSON-lines sidecar, imported by
``index.bulk_import.import_files`` (chunks of ``--chunk``) of ``--baseline-ref``'s tree and of this
checkout, each timed around that call in a process of its own; then ``--feature-items`` text feature
vectors (.npy, float32), which the import encodes with the bundle; the baseline is a raw redis-py pipeline
(no transaction, one per chunk) writing the same hashes: items (bucket · label · code), entries (label →
id and the same JSON texts) and the bucket counts, with everything computed beforehand. Items/s and the
ratio to the baseline are printed per row and written to ``--out``. A second floor, Redis's own:
``redis-cli --pipe`` (the mass-insertion client, no Python) writing only the items' and entries' hash
fields, one ``HSET`` per hash per chunk as the import does, the protocol written to a file before the
clock starts.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np

from index.bundle import load_bundle
from index.centers import route
from index.redis_server import RedisServer, free_port
from index.store import RedisStore
from index.stored_values import entry, records
from service.settings import DEFAULT_BUNDLE

ROOT = Path(__file__).resolve().parents[1]
BATCH = 1_000
KEY = "bench"
BUILT = ("models/default/featurizer_*", "index/_hamming*.so")  # built at set-up, not in git
DECIMALS = 3  # feature values as bench/http_bench.py writes them


def baseline_tree(ref: str, directory: Path) -> Path:
    """The tree of ``ref`` (git archive, nothing of this checkout's git state changed) plus the built files."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True, check=True)
    tree = directory / "baseline"
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tree, filter="tar")  # "data" refuses the absolute link examples/clipart/png
    for pattern in BUILT:
        for built in ROOT.glob(pattern):
            shutil.copy2(built, tree / built.relative_to(ROOT))
    return tree


def start_service(tree: Path, redis_url: str, index_name: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XMHASH_")} | {
        "REDIS_URL": redis_url,
        "PYTHONPATH": str(tree),
        "XMHASH_BUNDLE_PATH": str(tree / "models" / "default"),
        "XMHASH_INDEX_NAME": index_name,
        "XMHASH_PORT": str(port),
        "XMHASH_API_KEY": KEY,
        "XMHASH_MAX_BATCH_ITEMS": str(BATCH),
        "XMHASH_ACCESS_LOG": "false",
        "XMHASH_DEMO_CORPUS": "false",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"service from {tree} did not start")


def bodies(modality: str, dim: int, batches: int, binary: bool, prefix: str) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for b in range(batches):
        x = rng.random((BATCH, dim))
        items = [
            {
                "id": f"{prefix}{b}-{i}",
                "modality": modality,
                "features": x[i].astype("<f4").tobytes() if binary else x[i].round(DECIMALS).tolist(),
                "metadata": {"b": b, "i": i},
            }
            for i in range(BATCH)
        ]
        out.append(msgpack.packb({"items": items}) if binary else json.dumps({"items": items}).encode())
    return out


def post(port: int, body: bytes, content_type: str) -> float:
    """Send one batch on a fresh connection; seconds until its answer (every item stored) arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        started = time.perf_counter()
        connection.request("POST", "/v1/items:batch", body, {"content-type": content_type, "X-API-Key": KEY})
        response = connection.getresponse()
        answer = json.loads(response.read())
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    assert response.status == 200 and answer["stored"] == BATCH, (response.status, str(answer)[:300])
    return seconds


def batch_rows(args, server: RedisServer, dim: int, tmp: Path) -> dict:
    """The three services side by side, batches sent in turn (baseline, JSON, msgpack, baseline, …), so
    that a busy machine slows every row alike; items/s from each row's median batch time."""
    trees = {"baseline_json": baseline_tree(args.baseline_ref, tmp), "json": ROOT, "msgpack": ROOT}
    kinds = {name: "application/msgpack" if name == "msgpack" else "application/json" for name in trees}
    count = (args.batches + 1) * args.clients
    payloads = {name: bodies(args.modality, dim, count, name == "msgpack", f"{name}-") for name in trees}
    services = {}
    try:
        for name, tree in trees.items():
            services[name] = start_service(tree, server.url, f"bench-{name}")
        times: dict[str, list[float]] = {name: [] for name in trees}
        with ThreadPoolExecutor(args.clients) as clients:
            for round_ in range(args.batches + 1):  # round 0 warms up
                for name, (_, port) in services.items():
                    sent = payloads[name][round_ * args.clients : (round_ + 1) * args.clients]
                    started = time.perf_counter()
                    list(clients.map(lambda body, port=port, name=name: post(port, body, kinds[name]), sent))
                    if round_:
                        times[name].append(time.perf_counter() - started)
    finally:
        for process, _ in services.values():
            process.terminate()
            process.wait(60)
    rows = {}
    for name, seconds in times.items():
        rows[name] = {
            "items_per_s": round(args.clients * BATCH / float(np.median(seconds))),
            "round_ms_p50": round(1e3 * float(np.median(seconds)), 1),
            "round_ms_min": round(1e3 * min(seconds), 1),
            "batches": len(seconds) * args.clients,
            "clients": args.clients,
            "body_mb": round(len(payloads[name][0]) / 1e6, 2),
        }
        rows[name]["vs_baseline"] = round(rows[name]["items_per_s"] / rows["baseline_json"]["items_per_s"], 2)
        print(
            f"batch endpoint, {name} ({args.modality} features, {BATCH} per batch):", json.dumps(rows[name]), flush=True
        )
    return rows


def raw_pipeline(server: RedisServer, bundle, codes: np.ndarray, ids: list[str], metadata: list[str], chunk: int):
    """The floor: the same keys written by plain pipelined HSET/HINCRBY, values computed beforehand."""
    store = RedisStore(server.client(), "bench-raw", bundle.bundle_id)
    buckets = route(codes, bundle.centers)[:, 0]
    values = [row.tobytes() for row in records(buckets, codes, np.arange(1, len(codes) + 1))]
    entries = [entry(item, meta) for item, meta in zip(ids, metadata, strict=True)]
    client = server.client()
    started = time.perf_counter()
    for start in range(0, len(codes), chunk):
        part = slice(start, start + chunk)
        pipe = client.pipeline(transaction=False)
        pipe.hset(store.keys.items["image"], mapping=dict(zip(ids[part], values[part], strict=True)))
        labels = range(start + 1, start + 1 + len(entries[part]))
        pipe.hset(store.keys.entries["image"], mapping=dict(zip(labels, entries[part], strict=True)))
        counted = np.bincount(buckets[part])
        for bucket in np.flatnonzero(counted).tolist():
            pipe.hincrby(store.keys.counts["image"], bucket, int(counted[bucket]))
        pipe.execute()
    return len(codes) / (time.perf_counter() - started)


def _resp(*args: bytes) -> bytes:
    """One command in the Redis protocol (RESP), as ``redis-cli --pipe`` reads it."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def redis_cli_pipe(
    server: RedisServer, ids: list[str], values: list[bytes], metadata: list[str], chunk: int, tmp: Path
) -> float:
    """Items/s of Redis itself writing the items' and entries' fields, fed by ``redis-cli --pipe``."""
    path = tmp / "pipe.resp"
    with path.open("wb") as out:
        for start in range(0, len(ids), chunk):
            part = range(start, min(start + chunk, len(ids)))
            out.write(_resp(b"HSET", b"pipe:items", *[x for i in part for x in (ids[i].encode(), values[i])]))
            entries = [x for i in part for x in (b"%d" % (i + 1), entry(ids[i], metadata[i]))]
            out.write(_resp(b"HSET", b"pipe:entries", *entries))
    started = time.perf_counter()
    with path.open("rb") as stdin:
        subprocess.run(["redis-cli", "-p", str(server.port), "--pipe"], stdin=stdin, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    assert server.client().hlen("pipe:items") == len(set(ids))
    path.unlink()
    return len(ids) / seconds


def import_rows(args, server: RedisServer, bundle, tmp: Path) -> dict:
    n = args.import_items
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (n, bundle.bits // 8), dtype=np.uint8)
    ids = [f"imp{i}" for i in range(n)]
    metadata = [json.dumps({"i": i}) for i in range(n)]
    np.save(tmp / "codes.npy", codes)
    (tmp / "codes.jsonl").write_text(
        "".join(f'{{"id": "{item}", "metadata": {meta}}}\n' for item, meta in zip(ids, metadata, strict=True))
    )
    features = args.feature_items or n
    np.save(tmp / "features.npy", rng.normal(size=(features, bundle.input_dim("text"))).astype(np.float32))
    (tmp / "features.jsonl").write_text("".join(f'{{"id": "f{i}"}}\n' for i in range(features)))
    rows = {"raw_pipeline": {"items_per_s": round(raw_pipeline(server, bundle, codes, ids, metadata, args.chunk))}}
    print("raw Redis pipeline, same keys:", json.dumps(rows["raw_pipeline"]), flush=True)
    blank = np.zeros(n, np.int64)  # bucket and label 0: the floor only needs records of the real size
    values = [row.tobytes() for row in records(blank, codes, blank)]
    rows["redis_cli_pipe"] = {"items_per_s": round(redis_cli_pipe(server, ids, values, metadata, args.chunk, tmp))}
    print("redis-cli --pipe, items and entries fields only:", json.dumps(rows["redis_cli_pipe"]), flush=True)
    (tmp / "import").mkdir()
    trees = {"import_codes_before": baseline_tree(args.baseline_ref, tmp / "import"), "import_codes": ROOT}
    for name, tree in trees.items():  # the same file, the same timed call, from each tree
        rate = timed_import(tree, server, f"bench-{name}", tmp / "codes.npy", "image", args.chunk, n)
        rows[name] = {"items_per_s": round(rate), "items": n, "tree": args.baseline_ref if tree != ROOT else "this"}
        rows[name]["vs_raw_pipeline"] = round(rate / rows["raw_pipeline"]["items_per_s"], 2)
        print(f"bulk import ({name}):", json.dumps(rows[name]), flush=True)
    rows["import_codes"]["vs_before"] = round(
        rows["import_codes"]["items_per_s"] / rows["import_codes_before"]["items_per_s"], 2
    )
    rate = timed_import(ROOT, server, "bench-import_text_features", tmp / "features.npy", "text", args.chunk, features)
    rows["import_text_features"] = {"items_per_s": round(rate), "items": features}
    rows["import_text_features"]["vs_raw_pipeline"] = round(rate / rows["raw_pipeline"]["items_per_s"], 2)
    print("bulk import (import_text_features):", json.dumps(rows["import_text_features"]), flush=True)
    return rows


# Times import_files alone (not the interpreter's start nor the bundle's load), in a process of the tree given.
_TIMED_IMPORT = """
import json, sys, time
from pathlib import Path
import redis
from index.bulk_import import import_files, open_store
from index.bundle import load_bundle
url, index_name, path, modality, chunk = sys.argv[1:6]
bundle = load_bundle("models/default")
store = open_store(redis.Redis.from_url(url), index_name, bundle)
started = time.perf_counter()
summary = import_files(store, bundle, modality, [Path(path)], chunk=int(chunk), progress=False)
print(json.dumps({"seconds": time.perf_counter() - started, "items": summary.written_items}))
"""


def timed_import(tree: Path, server: RedisServer, index_name: str, path: Path, modality: str, chunk: int, n: int):
    """Items/s of ``import_files`` of ``tree`` (its own process, ``PYTHONPATH`` the tree) into a new index."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    command = [sys.executable, "-c", _TIMED_IMPORT, server.url, index_name, str(path), modality, str(chunk)]
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["items"] == n, result
    return n / result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per endpoint row (+1 warm-up)")
    parser.add_argument("--modality", choices=["text", "image"], default="text")
    parser.add_argument("--clients", type=int, default=1, help="batches in flight at once per row")
    parser.add_argument("--baseline-ref", default="main", help="git ref whose tree is today's path")
    parser.add_argument("--import-items", type=int, default=1_000_000)
    parser.add_argument("--feature-items", type=int, default=0, help="feature vectors to import (0: --import-items)")
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--skip", choices=["batch", "import"], action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("var/bench/ingest.json"))
    args = parser.parse_args()
    bundle = load_bundle(DEFAULT_BUNDLE)
    report: dict = {"batch_items": BATCH, "modality": args.modality, "chunk": args.chunk}
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        server = RedisServer(tmp / "redis").start()
        try:
            if "batch" not in args.skip:
                report["batch_endpoint"] = batch_rows(args, server, bundle.input_dim(args.modality), tmp)
            if "import" not in args.skip:
                report["bulk_import"] = import_rows(args, server, bundle, tmp)
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
