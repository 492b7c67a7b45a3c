"""Level 2: a packed-bit Hamming scan inside buckets, stored as the inverted lists of one FAISS
``IndexBinaryIVF`` (one list per bucket).

Routing is ours (the head code's nearest centers, ``index.centers``), so the IVF's own quantizer is
never used: items are added to their bucket's list with ``add_core``, and a query's probed lists are
scanned in place, all of them in one call, by the kernel ``index._hamming`` (C, built with the
package). It returns exactly what FAISS's counting scanner (``search_preassigned`` with ``use_heap =
False``) returns, five times faster on near codes: ``index/_hamming.c`` says why, and the tests
compare the two.

Ranking is exact and deterministic: for every Hamming distance the first k codes met are kept, and
codes are met in probe order (nearest bucket first) and, within a bucket, in list order, which is
label (insertion) order: additions keep it and removals keep the order of the rest. So results are
ordered by (distance, probe rank of the bucket, insertion order): among equally distant codes, those
of the semantically nearer bucket come first.

A FAISS id carries the item's label and its bucket, so a hit says where it came from without a lookup.
Besides the lists (code and id: 16 B an item at 64 bits), the scan keeps one bit per label telling
whether it holds that label (applying the change feed is idempotent by it), and nothing per item in
Python. Items are appended list by list (``add_entries``), so a list loaded in one call holds exactly
its items, with no spare capacity.
"""

from __future__ import annotations

import faiss
import numpy as np

from index import _hamming

_BUCKET_BITS = 20  # FAISS id = label << 20 | bucket: up to ~10^6 buckets and 2^43 labels
_BUCKET_MASK = (1 << _BUCKET_BITS) - 1


class BucketScan:
    """The items of one modality, split into buckets, scanned by Hamming distance within probed buckets."""

    def __init__(self, bits: int, n_buckets: int) -> None:
        if not 0 < n_buckets <= _BUCKET_MASK + 1:
            raise ValueError(f"between 1 and {_BUCKET_MASK + 1} buckets, got {n_buckets}")
        self.bits = bits
        self._quantizer = faiss.IndexBinaryFlat(bits)  # required by the constructor; kept alive here
        self._ivf = faiss.IndexBinaryIVF(self._quantizer, bits, n_buckets)
        self._ivf.is_trained = True
        self._lists = faiss.downcast_InvertedLists(self._ivf.invlists)
        self._newest = np.zeros(n_buckets, dtype=np.int64)  # highest label ever added to each bucket
        # Where each list's codes and ids are, and its length, for the kernel; refreshed for the lists
        # an addition or removal touched (a list's storage moves when it grows).
        self._code_ptrs = np.zeros(n_buckets, dtype=np.int64)
        self._id_ptrs = np.zeros(n_buckets, dtype=np.int64)
        self._sizes = np.zeros(n_buckets, dtype=np.int64)
        self._held = np.zeros(0, dtype=np.uint8)  # bit ``label`` is set while this scan holds the label

    def __len__(self) -> int:
        return self._ivf.ntotal

    def bucket_sizes(self) -> np.ndarray:
        return self._sizes.copy()

    def codes(self) -> np.ndarray:
        """A copy of every code held (n, bytes), bucket by bucket, for statistics over the stored codes."""
        held = [self._entries(bucket)[1] for bucket in np.flatnonzero(self._sizes).tolist()]
        return np.concatenate(held) if held else np.zeros((0, self._ivf.code_size), dtype=np.uint8)

    def _locate(self, buckets: np.ndarray) -> None:
        for bucket in np.unique(buckets).tolist():
            self._code_ptrs[bucket] = int(self._lists.get_codes(bucket))
            self._id_ptrs[bucket] = int(self._lists.get_ids(bucket))
            self._sizes[bucket] = self._lists.list_size(bucket)

    def add(self, labels: np.ndarray, codes: np.ndarray, buckets: np.ndarray) -> None:
        """Add items (labels ascending within the call), keeping every bucket in label order: labels
        normally exceed all present, but a process catching up after loading a snapshot may add one
        older than some already in its bucket, which then is re-sorted."""
        labels = np.asarray(labels, np.int64)
        buckets = np.ascontiguousarray(buckets, dtype=np.int64)
        late = np.unique(buckets[labels < self._newest[buckets]])
        np.maximum.at(self._newest, buckets, labels)
        order = np.argsort(buckets, kind="stable")  # grouped by bucket, label order kept within each
        ids = np.ascontiguousarray(((labels << _BUCKET_BITS) | buckets)[order])
        codes = np.ascontiguousarray(np.asarray(codes, dtype=np.uint8)[order])
        present, starts = np.unique(buckets[order], return_index=True)
        stops = [*starts[1:].tolist(), len(ids)]
        for bucket, start, stop in zip(present.tolist(), starts.tolist(), stops, strict=True):
            ids_ptr, codes_ptr = faiss.swig_ptr(ids[start:stop]), faiss.swig_ptr(codes[start:stop])
            self._lists.add_entries(bucket, stop - start, ids_ptr, codes_ptr)
        self._ivf.ntotal += len(ids)
        self._mark(labels, True)
        for bucket in late.tolist():
            ids, codes = self._entries(bucket)
            order = np.argsort(ids, kind="stable")  # ids sort as labels do: the label is the high part
            self._replace(bucket, ids[order], codes[order])
        self._locate(buckets)

    def remove(self, labels: np.ndarray, buckets: np.ndarray) -> None:
        """Remove items, keeping the order of the rest of their buckets (FAISS's own removal swaps in
        the last entry, which would reorder ties)."""
        labels, buckets = np.asarray(labels, np.int64), np.asarray(buckets, np.int64)
        for bucket in np.unique(buckets).tolist():
            ids, codes = self._entries(bucket)
            keep = ~np.isin(ids >> _BUCKET_BITS, labels[buckets == bucket])
            self._replace(bucket, ids[keep], codes[keep])
        self._mark(labels, False)
        self._locate(buckets)

    def holds(self, labels: np.ndarray | list[int]) -> np.ndarray:
        """Whether each label is in this scan (bool array)."""
        labels = np.asarray(labels, np.int64)
        inside = (labels >> 3) < len(self._held)
        held = np.zeros(len(labels), dtype=bool)
        held[inside] = (self._held[labels[inside] >> 3] >> (labels[inside] & 7)) & 1
        return held

    def _mark(self, labels: np.ndarray, held: bool) -> None:
        if not len(labels):
            return
        size = int(labels.max() >> 3) + 1
        if size > len(self._held):  # grown geometrically: labels mostly arrive in increasing order
            self._held = np.concatenate(
                [self._held, np.zeros(max(size, 2 * len(self._held)) - len(self._held), np.uint8)]
            )
        bits = np.left_shift(1, labels & 7).astype(np.uint8)
        if held:
            np.bitwise_or.at(self._held, labels >> 3, bits)
        else:
            np.bitwise_and.at(self._held, labels >> 3, ~bits)

    def _entries(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of a bucket's FAISS ids and codes, in list order."""
        size, code_size = self._lists.list_size(bucket), self._ivf.code_size
        ids = faiss.rev_swig_ptr(self._lists.get_ids(bucket), size).copy()
        codes = faiss.rev_swig_ptr(self._lists.get_codes(bucket), size * code_size).reshape(size, code_size).copy()
        return ids, codes

    def _replace(self, bucket: int, ids: np.ndarray, codes: np.ndarray) -> None:
        size = self._lists.list_size(bucket)
        ids, codes = np.ascontiguousarray(ids), np.ascontiguousarray(codes)
        self._lists.resize(bucket, 0)
        self._lists.add_entries(bucket, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes))
        self._ivf.ntotal -= size - len(ids)

    def search(
        self, queries: np.ndarray, probes: np.ndarray, k: int, with_codes: bool = False
    ) -> tuple[np.ndarray, ...]:
        """Top k of each query over its probed buckets (``probes``: (nq, p), nearest first): distances
        (int32), labels (int64) and the bucket each came from, all −1 past the end of the results; with
        ``with_codes``, also the results' packed codes (nq, k, bytes), zeros past the end, for a re-ranker."""
        queries = np.ascontiguousarray(queries, dtype=np.uint8)
        probes = np.ascontiguousarray(probes, dtype=np.int64)
        distances = np.empty((len(queries), k), dtype=np.int32)
        ids = np.empty((len(queries), k), dtype=np.int64)
        code_size = self._ivf.code_size
        lists = (queries, probes, self._code_ptrs, self._id_ptrs, self._sizes, code_size, k, distances, ids)
        codes = np.empty((len(queries), k, code_size), dtype=np.uint8) if with_codes else None
        _hamming.topk(*lists, *(() if codes is None else (codes,)))
        # Past the end the kernel writes -1, which the arithmetic shift keeps; the mask would not.
        found = (distances, ids >> _BUCKET_BITS, np.where(ids >= 0, ids & _BUCKET_MASK, -1))
        return found if codes is None else (*found, codes)
