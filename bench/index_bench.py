"""Two-level index benchmark: retention vs cost, latency vs a flat FAISS scan.

    python -m bench.index_bench --bundle var/runs/dsfh/64bits/bundle

1. Retention on OpenClipart: the bundle encodes the real query and database sets; per direction and
   probe, MAP@50 and recall@100 of the routed search relative to the full scan, and codes scanned.
2. Scaled databases: the real database codes replicated with bit noise to 1 M and 4 M items (labels
   copied), the real query codes, the same retention figures.
3. Speed at 1 M items, one thread: per-query latency of the two-level search vs ``IndexBinaryFlat``,
   batched throughput, and the in-bucket scan rate vs FAISS's raw flat scan rate (codes per second).

A worker's memory per item, its reload time and the search latency with ids and metadata read from Redis
are ``bench.memory_bench``'s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from bench.http_load import replicate
from index.bundle import load_bundle
from index.centers import fit_centers, head_signs, nearest_centers, route
from index.scan import BucketScan
from training.datasets import load_dataset
from training.evaluation.metrics import average_precision_at, relevance
from training.featurize.pipeline import bundle_features_kind, featurize

DIRECTIONS = {"i2t": ("image", "text"), "t2i": ("text", "image")}


def build(codes: np.ndarray, bits: int, head_bits: int, k: int, seed: int = 0):
    """Fit centers on (a sample of) the database head codes, assign, and fill a BucketScan; returns it,
    the centers and each code's bucket."""
    rng = np.random.default_rng(seed)
    head = head_signs(codes, head_bits)
    sample = head[rng.choice(len(head), size=min(len(head), 200_000), replace=False)]
    centers, _ = fit_centers(sample, k, rng)
    buckets = nearest_centers(head, centers)[:, 0]
    scan = BucketScan(bits, k)
    scan.add(np.arange(len(codes)), codes, buckets)
    return scan, centers, buckets


def routed_search(scan: BucketScan, centers: np.ndarray, queries: np.ndarray, probe: int, k: int):
    """Route and scan, as the index does; returns labels and the probed buckets."""
    probes = route(queries, centers, probe)
    _, labels, _ = scan.search(queries, probes, k)
    return labels, probes


def retention(scan, centers, queries, q_labels, db_labels, probes: list[int]) -> list[dict]:
    n = len(db_labels)
    sizes = scan.bucket_sizes()
    full, _ = routed_search(scan, centers, queries, len(centers), 100)
    rel_full = np.take_along_axis(relevance(q_labels, db_labels), full, 1)
    map_full = average_precision_at(rel_full, 50).mean()
    rows = [{"probe": "all", "MAP@50": round(float(map_full), 4), "retention": 1.0, "recall@100": 1.0,
             "scanned": 1.0, "fewer_codes": 1.0}]  # fmt: skip
    for probe in probes:
        labels, probes = routed_search(scan, centers, queries, probe, 100)
        scanned = sizes[probes].sum(1)
        rel = np.take_along_axis(relevance(q_labels, db_labels), np.maximum(labels, 0), 1) & (labels >= 0)
        value = average_precision_at(rel, 50).mean()
        recall = np.mean([len(set(a) & set(b)) / 100 for a, b in zip(labels.tolist(), full.tolist(), strict=True)])
        fraction = scanned.mean() / n
        rows.append({
            "probe": probe, "MAP@50": round(float(value), 4), "retention": round(float(value / map_full), 4),
            "recall@100": round(float(recall), 4), "scanned": round(float(fraction), 4),
            "fewer_codes": round(float(1 / fraction), 1),
        })  # fmt: skip
    return rows


def latency(scan, centers, flat, database, buckets, queries, probe: int, k: int = 100) -> dict:
    faiss.omp_set_num_threads(1)

    def per_query(fn) -> np.ndarray:
        times = []
        for q in queries:
            started = time.perf_counter()
            fn(q[None])
            times.append(time.perf_counter() - started)
        return np.array(times) * 1e3

    flat_ms = per_query(lambda q: flat.search(q, k))
    two_ms = per_query(lambda q: routed_search(scan, centers, q, probe, k))
    started = time.perf_counter()
    flat.search(queries, k)
    flat_batch = time.perf_counter() - started
    started = time.perf_counter()
    _, probes = routed_search(scan, centers, queries, probe, k)
    two_batch = time.perf_counter() - started
    scanned = scan.bucket_sizes()[probes].sum(1)
    # In-bucket scan rate, routing excluded: batched, and one query at a time (the service's case).
    started = time.perf_counter()
    scan.search(queries, probes, k)
    bucket_rate = scanned.sum() / (time.perf_counter() - started)
    started = time.perf_counter()
    for q, row in zip(queries, probes, strict=True):
        scan.search(q[None], row[None], k)
    single_rate = scanned.sum() / (time.perf_counter() - started)
    flat_rate = len(queries) * flat.ntotal / flat_batch
    flat_single_rate = flat.ntotal / (np.median(flat_ms) / 1e3)
    same_work_rate = _flat_rate_over_the_same_codes(database, buckets, queries, probes, k)
    return {
        "probe": probe,
        "flat_p50_ms": round(float(np.median(flat_ms)), 3),
        "two_level_p50_ms": round(float(np.median(two_ms)), 3),
        "flat_p99_ms": round(float(np.percentile(flat_ms, 99)), 3),
        "two_level_p99_ms": round(float(np.percentile(two_ms, 99)), 3),
        "speedup_p50": round(float(np.median(flat_ms) / np.median(two_ms)), 1),
        "batch_qps_flat": round(len(queries) / flat_batch, 1),
        "batch_qps_two_level": round(len(queries) / two_batch, 1),
        "batch_speedup": round(flat_batch / two_batch, 1),
        "in_bucket_codes_per_s": f"{bucket_rate:.3g}",
        "flat_codes_per_s": f"{flat_rate:.3g}",
        "flat_rate_over_bucket_rate": round(float(flat_rate / bucket_rate), 2),
        "single_query_in_bucket_codes_per_s": f"{single_rate:.3g}",
        "single_query_flat_codes_per_s": f"{flat_single_rate:.3g}",
        "single_query_flat_over_bucket": round(float(flat_single_rate / single_rate), 2),
        "same_codes_flat_codes_per_s": f"{same_work_rate:.3g}",
        "same_codes_flat_over_bucket": round(float(same_work_rate / single_rate), 2),
    }


def _flat_rate_over_the_same_codes(
    database: np.ndarray, buckets: np.ndarray, queries: np.ndarray, probes: np.ndarray, k: int
) -> float:
    """FAISS's raw flat scan (``knn_hamming``, one query at a time) over exactly the codes each query's
    probed buckets hold, gathered beforehand (untimed) into one contiguous block: the same work as the
    in-bucket scan, without buckets. Codes per second."""
    members = np.argsort(buckets, kind="stable")
    bounds = np.searchsorted(buckets[members], np.arange(buckets.max() + 2))
    seconds = scanned = 0.0
    for q, row in zip(queries, probes, strict=True):
        block = np.ascontiguousarray(database[np.concatenate([members[bounds[b] : bounds[b + 1]] for b in row])])
        started = time.perf_counter()
        faiss.knn_hamming(q[None], block, k)
        seconds += time.perf_counter() - started
        scanned += len(block)
    return scanned / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--scaled-buckets", type=int, default=1024, help="buckets on the scaled databases")
    parser.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--scales", type=int, nargs="+", default=[1_000_000, 4_000_000])
    parser.add_argument("--flip", type=float, default=0.05, help="bit-noise probability of the replicas")
    parser.add_argument("--skip-retention", action="store_true", help="only the scaled speed/memory parts")
    parser.add_argument("--out", type=Path, default=Path("var/bench/index.json"))
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    bits = bundle.bits
    head_bits = bundle.head_bits
    features = featurize(load_dataset(bundle.manifest.training.dataset), kind=bundle_features_kind(bundle.manifest))
    q_image, q_text, q_labels = features.part("query")
    d_image, d_text, d_labels = features.part("database")
    packed = {
        "query_image": bundle.packed_codes("image", q_image),
        "query_text": bundle.packed_codes("text", q_text),
        "database_image": bundle.packed_codes("image", d_image),
        "database_text": bundle.packed_codes("text", d_text),
    }
    report: dict = {"bundle": bundle.bundle_id, "method": bundle.method, "bits": bits, "head_bits": head_bits}
    for direction, (source, target) in ({} if args.skip_retention else DIRECTIONS).items():
        db = packed[f"database_{target}"]
        centers = bundle.centers  # every bundle has them: a learned head, or fitted on its training codes
        scan = BucketScan(bits, len(centers))
        scan.add(np.arange(len(db)), db, route(db, centers)[:, 0])
        rows = retention(scan, centers, packed[f"query_{source}"], q_labels, d_labels, args.probes)
        report[f"openclipart_{direction}"] = rows
        print(f"\nOpenClipart {direction} ({len(db)} items, {len(centers)} buckets)")
        for row in rows:
            print(json.dumps(row))
    for n in args.scales:
        db, labels = replicate(packed["database_image"], d_labels, bits, n, args.flip)
        scan, centers, buckets = build(db, bits, head_bits, args.scaled_buckets)
        rows = retention(scan, centers, packed["query_text"], q_labels, labels, args.probes)
        report[f"scaled_{n}_t2i"] = rows
        print(f"\nScaled t2i: {n} items, {len(centers)} buckets, flip {args.flip}")
        for row in rows:
            print(json.dumps(row))
        if n == 1_000_000:
            flat = faiss.IndexBinaryFlat(bits)
            flat.add(db)
            speed = [latency(scan, centers, flat, db, buckets, packed["query_text"], p) for p in args.probes]
            report["speed_1M"] = speed
            print("\nSpeed at 1M items, one thread (two-level vs IndexBinaryFlat)")
            for row in speed:
                print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
