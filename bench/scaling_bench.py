"""Raw and feature queries through HTTP at 1 M items, against the encoders' own single-query throughput on
the same cores, at several worker counts, with where the CPU went.

    python -m bench.scaling_bench prepare --out var/bench/scaling-inputs      # here: corpus → inputs
    python -m bench.scaling_bench run --inputs var/bench/scaling-inputs --rounds 1 2 4 8 16 2:16

``prepare`` (needs the OpenClipart corpus and the training cache) writes what ``run`` needs, so ``run`` can
go to a host without either: the default bundle's packed codes of the database images and their labels,
and the request bodies of ``bench.http_bench`` (feature vectors, whole texts, the 1–4 word natural
queries, base64 images). ``run``: a redis-server of its own, the codes replicated with 5 % bit noise to
``--items`` and re-bucketed into ``--buckets`` centers; then per round (N workers, C connections: ``N``
for ``--connections-per-worker`` × N, or ``N:C``), in one run:

- baselines on N cores: N processes, each running the MiniLM graph alone on one pre-tokenized natural
  query per call (the shipped graph, one thread), and N running EfficientNet-Lite0 on one decoded image
  per call; queries/s summed;
- the service with N workers (``XMHASH_WORKERS``), wrk ``--wrk-threads`` threads and C connections on
  ``GET /healthz``, feature queries, short raw texts,
  whole raw texts and raw images, each ``--duration`` s; the ratios raw short text ÷ the MiniLM baseline,
  raw image ÷ the EfficientNet baseline and feature queries ÷ ``/healthz``;
- the profile of each wrk round: CPU cores used by the service's workers, by redis-server and by the
  whole host (``/proc``), and from the service's own metrics the mean featurizer batch, its queue wait
  and the encode and search times per request, and the mean batch of the queries' hash function runs;
  with ``--profile``, the busiest worker's sampled stacks too (``bench.py_spy_profile``).
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import os
import re
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench import py_spy_profile
from bench.http_load import preload, run_wrk, start_service, wait_ready
from index.bundle import load_bundle
from index.bundle.pretrained import ImageEncoder, TextEncoder, image_pixels
from index.rebuild import rebucket
from index.redis_server import RedisServer
from index.store import RedisStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "models" / "default"
KINDS = ("features", "raw_short_text", "raw_text", "raw_image")
TICKS = os.sysconf("SC_CLK_TCK")


def prepare(out: Path, bundle_path: Path) -> None:
    from bench.http_bench import database_image_features, query_bodies
    from training.datasets.openclipart import load_openclipart

    bundle, corpus = load_bundle(bundle_path), load_openclipart()
    database = corpus.split.database
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "database_codes.npy", bundle.packed_codes("image", database_image_features(bundle, corpus)[database]))
    np.save(out / "database_labels.npy", corpus.labels[database])
    for name, (endpoint, requests) in query_bodies(bundle, corpus, corpus.split.query[:200]).items():
        (out / f"{name}.jsonl").write_text("\n".join(json.dumps(b) for b in requests))
        (out / f"{name}.endpoint").write_text(endpoint)
    print(json.dumps({"bundle": bundle.bundle_id, "out": str(out)}))


def _bodies(inputs: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (inputs / f"{name}.jsonl").read_text().splitlines()]


def _text_loop(bundle_path: str, texts: list[str], seconds: float, counts) -> None:
    bundle = Path(bundle_path)
    manifest = json.loads((bundle / "manifest.json").read_text())["modalities"]["text"]["featurizer"]
    encoder = TextEncoder(bundle / manifest["onnx"], (bundle / manifest["tokenizer"]).read_bytes(), 1)
    feeds = [encoder.tokens([text]) for text in texts]
    _count_loop(lambda i: encoder.session.run(None, feeds[i % len(feeds)]), seconds, counts)


def _image_loop(bundle_path: str, images: list[bytes], seconds: float, counts) -> None:
    bundle = Path(bundle_path)
    manifest = json.loads((bundle / "manifest.json").read_text())["modalities"]["image"]["featurizer"]
    encoder = ImageEncoder(bundle / manifest["onnx"], 1)
    pixels = [image_pixels(data, encoder.size)[None] for data in images]
    _count_loop(lambda i: encoder.embed_pixels(pixels[i % len(pixels)], batch=1), seconds, counts)


def _count_loop(call, seconds: float, counts) -> None:
    call(0)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        call(done)
        done += 1
    counts.put(done / (time.perf_counter() - started))


def baseline(target, processes: int, *args) -> float:
    """Calls/s summed over ``processes`` processes each running ``target(*args, counts)`` at once."""
    context = multiprocessing.get_context("spawn")
    counts = context.Queue()
    running = [context.Process(target=target, args=(*args, counts)) for _ in range(processes)]
    for process in running:
        process.start()
    rates = [counts.get(timeout=600) for _ in running]
    for process in running:
        process.join()
    return round(sum(rates), 1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _descendants(pid: int) -> list[int]:
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            children = [int(c) for c in task.read_text().split()]
            found += children
            stack += children
    return found


def _profile_busiest_worker(pids: list[int], seconds: int) -> dict | None:
    """py-spy on the worker that used the most CPU over half a second, once wrk's connections are open
    (connections spread unevenly over workers: a worker picked blindly may serve none)."""
    time.sleep(1.0)
    serving = [p for p in pids if b"resource_tracker" not in Path(f"/proc/{p}/cmdline").read_bytes()]
    before = {p: _cpu_seconds(p) for p in serving}
    time.sleep(0.5)
    busiest = max(serving, key=lambda p: _cpu_seconds(p) - before[p])
    return py_spy_profile.finish(py_spy_profile.start(busiest, seconds))


def _host_busy() -> tuple[float, float]:
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values) - idle) / TICKS, sum(values) / TICKS


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^(xmhash_(?:featurize_batch_size|featurize_queue_seconds|hash_batch_size|encode_seconds"
                         r"|search_seconds)_(?:sum|count))\{([^}]*)\}\s+(\S+)$", line)  # fmt: skip
        if match:
            labels = ",".join(sorted(label for label in match.group(2).split(",") if label))
            key = f"{match.group(1)}{{{labels}}}"
            values[key] = values.get(key, 0.0) + float(match.group(3))
    return values


def _mean(after: dict, before: dict, name: str, labels: str) -> float | None:
    total = after.get(f"{name}_sum{{{labels}}}", 0) - before.get(f"{name}_sum{{{labels}}}", 0)
    count = after.get(f"{name}_count{{{labels}}}", 0) - before.get(f"{name}_count{{{labels}}}", 0)
    return round(total / count, 6) if count else None


def profiled_wrk(
    url: str, path: str, bodies: Path | None, args, connections: int, service_pid: int, redis_pid: int, profile: bool
):
    """One wrk round with the CPU each party used and the service's own timings over it (and, if ``profile``,
    the busiest worker's sampled stacks)."""
    pids = [service_pid, *_descendants(service_pid)]  # one worker serves in the service's own process
    before = {pid: _cpu_seconds(pid) for pid in pids}, _cpu_seconds(redis_pid), _host_busy(), _metrics(url)
    with ThreadPoolExecutor(1) as pool:
        recording = pool.submit(_profile_busiest_worker, pids, max(1, args.duration - 2)) if profile else None
        started = time.perf_counter()
        result = run_wrk(url + path, bodies, args.duration, connections, args.wrk_threads)
        seconds = time.perf_counter() - started
        if recording:
            result["profile_one_worker"] = recording.result()
    after = {pid: _cpu_seconds(pid) for pid in pids}, _cpu_seconds(redis_pid), _host_busy(), _metrics(url)
    busy, total = after[2][0] - before[2][0], after[2][1] - before[2][1]
    result["cores_workers"] = round(sum(after[0][p] - before[0][p] for p in pids) / seconds, 2)
    result["cores_redis"] = round((after[1] - before[1]) / seconds, 2)
    result["host_busy"] = round(busy / total, 3)
    modality = "image" if "image-to" in path else "text"
    target = "text" if path.endswith("-to-text") else "image"

    def mean(name: str, labels: str) -> float | None:
        return _mean(after[3], before[3], name, labels)

    result["mean_batch"] = mean("xmhash_featurize_batch_size", f'modality="{modality}"')
    result["mean_hash_batch"] = mean("xmhash_hash_batch_size", f'modality="{modality}"')
    result["mean_queue_ms"] = _ms(mean("xmhash_featurize_queue_seconds", f'modality="{modality}"'))
    for kind in ("features", "raw"):
        result[f"mean_encode_ms_{kind}"] = _ms(mean("xmhash_encode_seconds", f'input="{kind}",modality="{modality}"'))
    result["mean_search_ms"] = _ms(mean("xmhash_search_seconds", f'target="{target}"'))
    return result


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 3)


def run(args) -> None:
    inputs: Path = args.inputs
    texts = [body["text"] for body in _bodies(inputs, "raw_short_text")]
    images = [base64.b64decode(body["image_base64"]) for body in _bodies(inputs, "raw_image")]
    bundle = load_bundle(args.bundle)
    report: dict = {"items": args.items, "bundle": bundle.bundle_id, "cpus": os.cpu_count(), "rounds": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {"XMHASH_BATCH_WINDOW_MS": str(args.window_ms), "XMHASH_BATCH_MAX_ITEMS": str(args.batch)}
    report["settings"] = settings
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        try:
            store = RedisStore(server.client(), "bench", bundle.bundle_id)
            codes, labels = np.load(inputs / "database_codes.npy"), np.load(inputs / "database_labels.npy")
            report["preload_s"] = round(preload(store, bundle, codes, labels, args.items), 1)
            if args.buckets:
                started = time.perf_counter()
                rebucket(store, bundle.bits, args.buckets)
                report["rebucket_s"] = round(time.perf_counter() - started, 1)
            print(json.dumps(report), flush=True)
            for spec in args.rounds:
                workers, connections = _round(spec, args.connections_per_worker)
                row = {
                    "workers": workers,
                    "connections": connections,
                    "minilm_single_query_per_s": baseline(_text_loop, workers, str(args.bundle), texts, args.duration),
                    "efficientnet_single_image_per_s": baseline(
                        _image_loop, workers, str(args.bundle), images, args.duration
                    ),
                }
                service, url = start_service(server.url, 8, args.bundle, workers, settings)
                pids = (service.pid, server.process.pid)
                profile = workers in args.profile
                try:
                    row["startup_s"] = round(wait_ready(url, workers, args.items, 900), 1)
                    row["healthz"] = profiled_wrk(url, "/healthz", None, args, connections, *pids, profile)
                    for kind in args.kinds:
                        path = "/v1/search/" + (inputs / f"{kind}.endpoint").read_text()
                        row[kind] = profiled_wrk(url, path, inputs / f"{kind}.jsonl", args, connections, *pids, profile)
                finally:
                    service.terminate()
                    service.wait(60)
                row["ratio_text_vs_minilm"] = _ratio(row, "raw_short_text", row["minilm_single_query_per_s"])
                row["ratio_image_vs_efficientnet"] = _ratio(row, "raw_image", row["efficientnet_single_image_per_s"])
                row["ratio_features_vs_healthz"] = _ratio(row, "features", row["healthz"]["qps"])
                report["rounds"][spec] = row
                print(json.dumps(row), flush=True)
                args.out.write_text(json.dumps(report, indent=2))  # each round as it ends: a cut run keeps them
        finally:
            server.stop()


def _round(spec: str, per_worker: int) -> tuple[int, int]:
    """``N`` (N workers, ``per_worker`` × N connections) or ``N:C`` (N workers, C connections)."""
    workers, _, connections = spec.partition(":")
    return int(workers), int(connections) if connections else per_worker * int(workers)


def _ratio(row: dict, kind: str, baseline_rate: float) -> float | None:
    return round(row[kind]["qps"] / baseline_rate, 3) if kind in row and baseline_rate else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare")
    prep.add_argument("--out", type=Path, default=Path("var/bench/scaling-inputs"))
    prep.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    go = commands.add_parser("run")
    go.add_argument("--inputs", type=Path, default=Path("var/bench/scaling-inputs"))
    go.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE)
    go.add_argument("--rounds", nargs="+", default=["1", "2", "4", "8", "16"], help="N workers, or N:C connections")
    go.add_argument("--items", type=int, default=1_000_000)
    go.add_argument("--buckets", type=int, default=1024, help="re-bucket into this many centers; 0: keep")
    go.add_argument("--duration", type=int, default=5)
    go.add_argument("--connections-per-worker", type=int, default=4)
    go.add_argument("--wrk-threads", type=int, default=4)
    go.add_argument("--window-ms", type=float, default=2.0, help="XMHASH_BATCH_WINDOW_MS")
    go.add_argument("--batch", type=int, default=16, help="XMHASH_BATCH_MAX_ITEMS")
    go.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    go.add_argument("--out", type=Path, default=Path("var/bench/scaling.json"))
    go.add_argument("--profile", nargs="*", type=int, default=[], help="py-spy one worker in the rounds of these N")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.bundle)
    else:
        run(args)


if __name__ == "__main__":
    main()
