"""The in-bucket scan kernel (``index/_hamming.c``) returns exactly what FAISS's own scanner returns."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from index import _hamming
from index.scan import BucketScan


def faiss_counting_scan(scan: BucketScan, queries: np.ndarray, probes: np.ndarray, k: int):
    """FAISS's ``search_preassigned`` with its counting scanner over the same inverted lists: the
    reference ranking (distance, then the order codes are met: probe order, then list order)."""
    ivf = scan._ivf
    ivf.use_heap = False
    params = faiss.SearchParametersIVF()
    params.nprobe, params.max_codes = probes.shape[1], 1 << 62  # faiss#5555: max_codes = 0 scans nothing
    distances = np.empty((len(queries), k), dtype=np.int32)
    ids = np.empty((len(queries), k), dtype=np.int64)
    ivf.search_preassigned_c(
        len(queries), faiss.swig_ptr(queries), k, faiss.swig_ptr(probes),
        faiss.swig_ptr(np.zeros(probes.shape, dtype=np.int32)), faiss.swig_ptr(distances), faiss.swig_ptr(ids),
        False, params,
    )  # fmt: skip
    found = ids >= 0
    return np.where(found, distances, -1), np.where(found, ids >> 20, -1)


@pytest.mark.parametrize("bits", [8, 16, 24, 64, 128])
@pytest.mark.parametrize("k", [1, 7, 100])
def test_the_kernel_ranks_exactly_as_faiss_counting_scanner(bits: int, k: int) -> None:
    rng = np.random.default_rng(bits * 1000 + k)
    n_buckets, n = 16, 3000
    base = rng.integers(0, 256, size=(n_buckets, bits // 8), dtype=np.uint8)
    buckets = rng.integers(0, n_buckets, n)
    noise = (rng.random((n, bits // 8, 8)) < 0.08).astype(np.uint8)  # near codes: plenty of ties
    codes = base[buckets] ^ np.packbits(noise, axis=2).reshape(n, bits // 8)
    scan = BucketScan(bits, n_buckets)
    for part in np.array_split(np.arange(n), 5):  # several additions: lists grow and move
        scan.add(part + 1, codes[part], buckets[part])
    scan.remove(np.arange(1, n + 1, 7), buckets[::7])  # and removals keep the order of the rest
    queries = base[rng.integers(0, n_buckets, 50)] ^ rng.integers(0, 2, size=(50, bits // 8), dtype=np.uint8)
    for p in (1, 3, n_buckets):
        probes = np.stack([rng.permutation(n_buckets)[:p] for _ in range(50)]).astype(np.int64)
        distances, labels, found_in = scan.search(queries, probes, k)
        expected_distances, expected_labels = faiss_counting_scan(scan, queries, probes, k)
        np.testing.assert_array_equal(distances, expected_distances)
        np.testing.assert_array_equal(labels, expected_labels)
        assert (labels[:, 0] >= 0).all()  # every query found something
        assert np.array_equal(found_in, np.where(labels >= 0, buckets[np.maximum(labels - 1, 0)], -1))


def test_an_empty_index_and_no_queries_are_answered() -> None:
    scan = BucketScan(64, 4)
    distances, labels, buckets = scan.search(np.zeros((2, 8), np.uint8), np.array([[0, 1], [2, 3]]), k=3)
    assert (distances == -1).all() and (labels == -1).all() and (buckets == -1).all()
    assert scan.search(np.zeros((0, 8), np.uint8), np.zeros((0, 2), np.int64), k=3)[0].shape == (0, 3)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"probes": np.array([[0, 9]], np.int64)}, "probe 9 is not a list"),
        ({"probes": np.array([[0, -1]], np.int64)}, "probe -1 is not a list"),
        ({"out_ids": np.empty((1, 2), np.int64)}, "out_ids has 16 bytes, expected 24"),
        ({"id_ptrs": np.zeros(3, np.int64)}, "id_ptrs has 24 bytes, expected 32"),
        ({"queries": np.zeros(12, np.uint8)}, "queries whole codes"),
    ],
)
def test_the_kernel_refuses_arguments_that_do_not_fit_together(change: dict, message: str) -> None:
    args = {
        "queries": np.zeros((1, 8), np.uint8),
        "probes": np.array([[0, 1]], np.int64),
        "code_ptrs": np.zeros(4, np.int64),
        "id_ptrs": np.zeros(4, np.int64),
        "sizes": np.zeros(4, np.int64),
        "code_size": 8,
        "k": 3,
        "out_distances": np.empty((1, 3), np.int32),
        "out_ids": np.empty((1, 3), np.int64),
    } | change
    with pytest.raises(ValueError, match=message):
        _hamming.topk(*args.values())
