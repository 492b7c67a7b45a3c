"""Level 2: a packed-bit Hamming scan inside buckets, one FAISS binary flat index per bucket.

Items carry int64 *labels* given in increasing order of insertion, and each bucket's flat index stores
codes in insertion order; FAISS returns equal distances in storage order, so every per-bucket result
is ordered by (distance, label) and merging buckets by the same key gives a deterministic ranking that
equals a stable brute-force sort over the items in label order.
"""

from __future__ import annotations

import faiss
import numpy as np

_LABEL_BITS = 40  # labels < 2^40; the merge key packs (distance, label) into one int64
_MISSING = np.iinfo(np.int64).max


class BucketScan:
    """The items of one modality, split into buckets, each a FAISS ``IndexBinaryIDMap`` over a flat scan."""

    def __init__(self, bits: int, n_buckets: int) -> None:
        if bits % 8:
            raise ValueError(f"code length {bits} is not a multiple of 8")
        self.bits = bits
        self.buckets = [faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits)) for _ in range(n_buckets)]

    def __len__(self) -> int:
        return sum(b.ntotal for b in self.buckets)

    def bucket_sizes(self) -> np.ndarray:
        return np.array([b.ntotal for b in self.buckets], dtype=np.int64)

    def add(self, labels: np.ndarray, codes: np.ndarray, buckets: np.ndarray) -> None:
        """Append items; labels must exceed every label already present (insertion order)."""
        labels, buckets = np.asarray(labels, np.int64), np.asarray(buckets)
        codes = np.ascontiguousarray(codes, dtype=np.uint8)
        for bucket in np.unique(buckets):
            rows = np.flatnonzero(buckets == bucket)
            self.buckets[bucket].add_with_ids(codes[rows], labels[rows])

    def remove(self, labels: np.ndarray, buckets: np.ndarray) -> None:
        labels, buckets = np.asarray(labels, np.int64), np.asarray(buckets)
        for bucket in np.unique(buckets):
            self.buckets[bucket].remove_ids(labels[buckets == bucket])

    def search(self, queries: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top k of each query over its probed buckets: distances (int32), labels (int64) and the
        bucket each came from, all −1 past the end of the results. ``probes`` is (nq, p) buckets.

        Queries are grouped by bucket so each probed bucket is scanned once for all its queries.
        """
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        nq, p = probes.shape
        if nq == 1:
            return self._search_one(queries, probes[0], k)
        keys = np.full((nq, p * k), _MISSING, dtype=np.int64)
        origin = np.full((nq, p * k), -1, dtype=np.int64)
        for bucket in np.unique(probes):
            index = self.buckets[bucket]
            if index.ntotal == 0:
                continue
            rows, slots = np.nonzero(probes == bucket)
            distances, labels = index.search(queries[rows], k)
            found = labels >= 0
            key = (distances.astype(np.int64) << _LABEL_BITS) | np.where(found, labels, 0)
            columns = slots[:, None] * k + np.arange(k)
            keys[rows[:, None], columns] = np.where(found, key, _MISSING)
            origin[rows[:, None], columns] = bucket
        return _merge(keys, origin, k)

    def _search_one(self, query: np.ndarray, probes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One query (the latency path): FAISS writes each bucket's top k straight into its slot."""
        distances = np.zeros((len(probes), k), dtype=np.int32)
        labels = np.full((len(probes), k), -1, dtype=np.int64)
        pointer = faiss.swig_ptr(query)
        for slot, bucket in enumerate(probes.tolist()):
            index = self.buckets[bucket]
            if index.ntotal:
                index.search_c(1, pointer, k, faiss.swig_ptr(distances[slot]), faiss.swig_ptr(labels[slot]))
        found = labels >= 0
        keys = np.where(found, (distances.astype(np.int64) << _LABEL_BITS) | labels, _MISSING).reshape(1, -1)
        return _merge(keys, np.repeat(probes, k)[None, :], k)


def _merge(keys: np.ndarray, origin: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the k smallest (distance, label) keys with their buckets; −1 where there are fewer."""
    order = np.argsort(keys, axis=1)[:, :k]
    keys, origin = np.take_along_axis(keys, order, 1), np.take_along_axis(origin, order, 1)
    found = keys != _MISSING
    distances = np.where(found, keys >> _LABEL_BITS, -1).astype(np.int32)
    labels = np.where(found, keys & ((1 << _LABEL_BITS) - 1), -1)
    return distances, labels, np.where(found, origin, -1)
