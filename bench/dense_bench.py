"""The dense baseline served as a user would (FAISS HNSW over float vectors) beside the two-level hash
index, at 1 M items, in one run, on the same queries.

    python -m bench.dense_bench --method dsfh --bits 64

One trained model gives both sides: its real-valued outputs (``encoder.real_codes``, L2-normalised) are the
dense vectors, their signs the hash codes. Database: the real database images' vectors, replicated to
``--items`` with Gaussian noise and renormalised (the float analogue of ``index_bench.replicate``; the
codes are the signs of the same noisy vectors, so both indexes hold the same items); queries: the real
query texts (t2i). Dense side: ``IndexHNSWFlat`` (inner product, M, efConstruction, efSearch as given).
Hash side: the index bench's in-memory level (``BucketScan`` over k-means buckets of the codes, routed
search). One thread, one query at a time. Per side: build seconds, p50/p99 latency, MAP@50 of the top
100 at scale (labels copied with the replicas), bytes per item (measured RSS delta of the build, and the
structure's own serialized size), and ratios against HNSW.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np

from bench.dense_baseline import load_features, load_real, real_parts
from bench.index_bench import build, routed_search
from index.codes import pack_signs, to_signs
from training.evaluation.metrics import average_precision_at, relevance
from training.registry import TRAINERS


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def replicate_vectors(vectors: np.ndarray, labels: np.ndarray, n: int, noise: float, seed: int = 0):
    """``n`` unit vectors: copies of the real (normalised) ones plus isotropic Gaussian noise of expected
    norm ``noise``, renormalised; their labels copied, and the real row each copies."""
    rng = np.random.default_rng(seed)
    source = rng.integers(0, len(vectors), n)
    out = np.empty((n, vectors.shape[1]), dtype=np.float32)
    base = normalise(vectors)
    scale = noise / np.sqrt(vectors.shape[1])
    for start in range(0, n, 100_000):
        rows = source[start : start + 100_000]
        out[start : start + len(rows)] = normalise(base[rows] + scale * rng.standard_normal((len(rows), base.shape[1])))
    return out, labels[source], source


def per_query_ms(queries: np.ndarray, search) -> np.ndarray:
    times = np.empty(len(queries))
    for i, q in enumerate(queries):
        started = time.perf_counter()
        search(q[None])
        times[i] = time.perf_counter() - started
    return times * 1e3


def map_at_50(top: np.ndarray, q_labels: np.ndarray, db_labels: np.ndarray) -> float:
    """MAP@50 of top-100 label lists (−1 = no result), as ``index_bench.retention`` scores them."""
    rel = np.stack([relevance(q_labels[i : i + 1], db_labels[np.maximum(row, 0)])[0] for i, row in enumerate(top)])
    return float(average_precision_at(rel & (top >= 0), 50).mean())


def side(name: str, build_fn, search_fn, queries, q_labels, db_labels, n: int) -> tuple[dict, object]:
    """Build (timed, RSS delta), then latency and MAP@50 of one index."""
    before = rss_bytes()
    started = time.perf_counter()
    index = build_fn()
    build_s = time.perf_counter() - started
    grown = rss_bytes() - before
    ms = per_query_ms(queries, lambda q: search_fn(index, q))
    top = np.concatenate([search_fn(index, q[None]) for q in queries])
    row = {
        "index": name,
        "build_s": round(build_s, 1),
        "p50_ms": round(float(np.median(ms)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "MAP@50": round(map_at_50(top, q_labels, db_labels), 4),
        "rss_delta_bytes_per_item": round(grown / n, 1),
    }
    return row, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dsfh", choices=sorted(TRAINERS))
    parser.add_argument("--bits", type=int, default=64)
    parser.add_argument("--dataset", default="openclipart")
    parser.add_argument("--cache", type=Path, help="precomputed feature folder instead of the pipeline")
    parser.add_argument("--real", type=Path, help="saved real-valued outputs (<method>_real.npz) instead of training")
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--noise", type=float, default=0.3, help="expected noise norm of a replica (unit vectors)")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, default=64)
    parser.add_argument("--buckets", type=int, default=1024)
    parser.add_argument("--probe", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("var/bench/dense.json"))
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)

    features = load_features(args.dataset, args.cache)
    if args.real:
        args.method = args.real.name.removesuffix("_real.npz")
        vectors = load_real(args.real)[args.bits]
    else:
        vectors = real_parts(TRAINERS[args.method](features, args.bits, 0, {}), features)
    q_labels, d_labels = features.part("query")[2], features.part("database")[2]
    queries = normalise(vectors["query_text"])
    query_codes = pack_signs(to_signs(queries))
    database, labels, source = replicate_vectors(vectors["database_image"], d_labels, args.items, args.noise)
    codes = pack_signs(to_signs(database))
    flipped = float((to_signs(database[:10_000]) != to_signs(vectors["database_image"][source[:10_000]])).mean())
    dim, k = database.shape[1], 100

    def build_hnsw() -> faiss.Index:
        index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        index.hnsw.efSearch = args.ef_search
        index.add(database)
        return index

    def build_hash():
        return build(codes, args.bits, args.bits, args.buckets)

    hnsw_row, hnsw = side(
        f"HNSWFlat M={args.hnsw_m} efC={args.ef_construction} efSearch={args.ef_search}, {dim}-d float32",
        build_hnsw, lambda index, q: index.search(q, k)[1], queries, q_labels, labels, args.items,
    )  # fmt: skip
    hnsw_row["structure_bytes_per_item"] = round(len(faiss.serialize_index(hnsw)) / args.items, 1)
    hnsw_row["vector_bytes_per_item"] = 4 * dim
    del hnsw
    hash_row, (_, centers, _) = side(
        f"two-level hash, {args.bits} bits, {args.buckets} buckets, probe {args.probe}",
        build_hash, lambda index, q: routed_search(index[0], index[1], q, args.probe, k)[0],
        query_codes, q_labels, labels, args.items,
    )  # fmt: skip
    # Inverted lists hold the packed code and an int64 FAISS id per item; the centers are shared.
    hash_row["structure_bytes_per_item"] = round((args.items * (args.bits // 8 + 8) + centers.nbytes) / args.items, 1)
    hash_row["vector_bytes_per_item"] = args.bits // 8
    for key in ("build_s", "p50_ms", "p99_ms", "rss_delta_bytes_per_item", "structure_bytes_per_item"):
        hash_row[f"{key}_vs_hnsw"] = round(hash_row[key] / max(hnsw_row[key], 1e-9), 3)
    report = {
        "method": args.method, "bits": args.bits, "items": args.items, "noise": args.noise,
        "replica_sign_flip_fraction": round(flipped, 4), "queries": len(queries), "direction": "t2i",
        "dense": hnsw_row, "hash": hash_row,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
