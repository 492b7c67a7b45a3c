"""What hash health costs at scale: one scrape's statistics over a million codes, and the tie-group sizes a
search adds.

    python -m bench.hash_health_cost --items 1000000

``--items`` random codes of the default bundle's length in its number of buckets, held by a
:class:`~index.scan.BucketScan` as a service holds them. A scrape after a change costs what
``HashIndex.health`` does: copy the codes out of the scan, then ``index.hash_health.measure``
(best of ``--repeat``). A search adds ``tie_group_sizes`` of the scan's distances and one histogram
observation: timed per query beside the scan of the re-ranker's width (4 × its candidates, ``--probe``
buckets), the median of ``--queries``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from index.bundle import load_bundle
from index.hash_health import measure, tie_group_sizes
from index.scan import BucketScan
from service.metrics import Metrics
from service.settings import DEFAULT_BUNDLE


def _best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--probe", type=int, default=8)
    args = parser.parse_args()
    space = load_bundle(DEFAULT_BUNDLE, threads=1).code_space
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (args.items, space.bits // 8), dtype=np.uint8)
    buckets = rng.integers(0, len(space.centers), args.items)
    scan = BucketScan(space.bits, len(space.centers))
    scan.add(np.arange(args.items), codes, buckets)

    copy = _best(args.repeat, scan.codes)
    held, sizes = scan.codes(), scan.bucket_sizes()
    stats = _best(args.repeat, lambda: measure(held, sizes, space.bits))

    width = 4 * space.rerank_candidates
    tie_groups = Metrics().tie_groups.labels("image")
    scans, added = [], []
    for query in codes[rng.integers(0, args.items, args.queries)]:
        probes = rng.permutation(len(space.centers))[None, : args.probe]
        started = time.perf_counter()
        distances = scan.search(query[None], probes, width)[0]
        scanned = time.perf_counter()
        for size in tie_group_sizes(distances).tolist():
            tie_groups.observe(size)
        added.append(time.perf_counter() - scanned)
        scans.append(scanned - started)
    print(json.dumps({
        "items": args.items, "bits": space.bits, "buckets": len(space.centers),
        "scrape_copy_s": round(copy, 3), "scrape_measure_s": round(stats, 3),
        "scan_p50_us": round(float(np.median(scans)) * 1e6, 1),
        "tie_groups_p50_us": round(float(np.median(added)) * 1e6, 1),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
