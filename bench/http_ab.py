"""Query QPS of two source trees side by side: both services up at once, rounds alternating.

    python -m bench.http_ab --tree before=../before-tree:models/default --tree after=.:models/bow-v1
    python -m bench.http_ab --tree before=../before-tree --tree after=. --kind raw_short_text --connections 8

One run of ``bench/http_bench.py`` per tree measures each tree at a different time, and on this 2-core
machine the framework floor alone moves by 2× between runs. Here each tree serves its own copy of the
same 1 M items (its own Redis, filled by that tree's own ``bench.http_bench`` functions, so each stores
them in its own format) and both stay up; wrk then takes turns between them in ABBA order, so slow drift
falls on both alike, and each adjacent pair of rounds gives one after/before ratio. With one worker per
service the kernel's uneven split of connections over workers (the largest source of spread in
http_bench's rows) cannot differ between the two sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.http_bench import run_wrk

# Run inside each tree (cwd = the tree) with only the helpers every version of bench/http_bench.py has.
SERVE = """
import json, sys, tempfile
from pathlib import Path
import bench.http_bench as hb

items, buckets, probe, workers = map(int, sys.argv[1:5])
bundle_path, kind = sys.argv[5:7]
bundle = hb.load_bundle(bundle_path)
corpus = hb.load_openclipart()
database = corpus.split.database
with tempfile.TemporaryDirectory() as tmp:
    server = hb.RedisServer(Path(tmp) / "redis").start()
    service = None
    try:
        store = hb.RedisStore(server.client(), "bench", bundle.bundle_id)
        if hasattr(hb, "database_image_features"):
            images = hb.database_image_features(bundle, corpus)[database]
        else:
            images = bundle.image_features(corpus.images[database])
        hb.preload(store, bundle, images, corpus.labels[database], items)
        hb.rebucket(store, bundle.bits, buckets)
        service, url = hb.start_service(server.url, probe, Path(bundle_path), workers)
        hb.wait_ready(url, workers, items, 900)
        endpoint, requests = hb.query_bodies(bundle, corpus, corpus.split.query[:200])[kind]
        bodies = Path(tmp) / f"{kind}.jsonl"
        bodies.write_text("\\n".join(json.dumps(b) for b in requests))
        print(json.dumps({"url": url, "bodies": str(bodies), "endpoint": endpoint}), flush=True)
        sys.stdin.read()  # serve until the driver closes our stdin
    finally:
        if service is not None:
            service.terminate()
            service.wait(30)
        server.stop()
"""


@dataclass
class Side:
    name: str
    process: subprocess.Popen
    url: str
    bodies: Path
    endpoint: str

    def round(self, seconds: int, connections: int) -> dict:
        """One wrk round of this side's queries."""
        return run_wrk(f"{self.url}/v1/search/{self.endpoint}", self.bodies, seconds, connections)


def start_side(spec: str, items: int, buckets: int, probe: int, workers: int, kind: str) -> Side:
    """``name=tree[:bundle]`` → that tree's service, loaded and ready (bundle relative to the tree)."""
    name, _, rest = spec.partition("=")
    tree, _, bundle = rest.partition(":")
    tree_path = Path(tree).resolve()
    bundle_path = (tree_path / (bundle or "models/default")).resolve()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(items), str(buckets), str(probe), str(workers), str(bundle_path), kind],
        cwd=tree_path,
        env=os.environ | {"PYTHONPATH": str(tree_path)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = ""
    while not line.startswith('{"url"'):  # the tree's set-up may print progress of its own first
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: the tree's service did not start (exit {process.wait()})")
    ready = json.loads(line)
    print(f"{name}: {tree_path} serving {bundle_path.name} at {ready['url']}", flush=True)
    return Side(name, process, ready["url"], Path(ready["bodies"]), ready["endpoint"])


def ab_order(rounds: int) -> list[int]:
    """0/1 side indices in ABBA blocks: A B B A A B B A …, so each side is first as often as second."""
    return [(r // 2 + r) % 2 for r in range(2 * rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="name=tree[:bundle]; exactly two")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--duration", type=int, default=8, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=8, help="rounds per side")
    parser.add_argument("--kind", choices=["features", "raw_short_text", "raw_text", "raw_image"], default="features")
    parser.add_argument("--out", type=Path, default=Path("var/bench/http_ab.json"))
    args = parser.parse_args()
    if len(args.tree) != 2:
        parser.error("give exactly two --tree")

    sides = [start_side(spec, args.items, args.buckets, args.probe, args.workers, args.kind) for spec in args.tree]
    try:
        for side in sides:  # warm-up round, not counted
            side.round(3, args.connections)
        qps: list[list[float]] = [[], []]
        for index in ab_order(args.rounds):
            side = sides[index]
            row = side.round(args.duration, args.connections)
            qps[index].append(row["qps"])
            print(f"{side.name}: {json.dumps(row)}", flush=True)
    finally:
        for side in sides:
            side.process.stdin.close()
            side.process.wait(60)
    ratios = [b / a for a, b in zip(qps[0], qps[1], strict=True)]
    report = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "qps": {side.name: values for side, values in zip(sides, qps, strict=True)},
        "mean_qps": {side.name: statistics.fmean(values) for side, values in zip(sides, qps, strict=True)},
        "ratio_per_pair": [round(r, 4) for r in ratios],
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_of_means": round(statistics.fmean(qps[1]) / statistics.fmean(qps[0]), 4),
    }
    print(json.dumps({k: report[k] for k in ("mean_qps", "ratio_median", "ratio_of_means")}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
