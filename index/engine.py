"""The two-level cross-modal Hamming index the service calls.

Level 1 routes a code to buckets: the nearest binary centers by Hamming distance over the code's
head bits (UDDH's shared code, or the whole code for methods without one). Level 2 scans the packed
codes inside the probed buckets (``index.scan``). Redis (``index.store``) is the source of truth;
the FAISS structures are a cache rebuilt from it by :meth:`HashIndex.open`.

Writes take one lock: labels are allocated, the batch is written to Redis (the acknowledgement), and
only then applied in memory, so memory never holds an unacknowledged item and label order is
insertion order. Searches take the same lock only around the in-memory scan.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from index.centers import nearest_centers
from index.errors import IndexInputError, ItemNotFoundError
from index.scan import BucketScan
from index.store import MODALITIES, RedisStore
from training.codes import unpack_signs


@dataclass(frozen=True)
class Item:
    """One item to index: its id, modality, packed code and user metadata."""

    id: str
    modality: str
    code: np.ndarray  # packed uint8, bits / 8 bytes
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: str
    distance: int
    bucket: int
    metadata: dict


@dataclass
class _Side:
    """In-memory state of one modality: the bucket scan and label → id."""

    scan: BucketScan
    ids: dict[int, str] = field(default_factory=dict)


class HashIndex:
    """Items of both modalities under one bundle's code space, searchable across modalities."""

    def __init__(self, store: RedisStore, bits: int, centers: np.ndarray, centers_version: str) -> None:
        if bits % 8:
            raise ValueError(f"code length {bits} is not a multiple of 8")
        head_bits = centers.shape[1]
        if head_bits % 8 or head_bits > bits:
            raise ValueError(f"head of {head_bits} bits must be a multiple of 8 and at most {bits}")
        self.store = store
        self.bits = bits
        self.centers = np.asarray(centers, dtype=np.int8)
        self.centers_version = centers_version
        self.head_bytes = head_bits // 8
        self.sides = {m: _Side(BucketScan(bits, len(centers))) for m in MODALITIES}
        self._lock = threading.Lock()

    @property
    def n_buckets(self) -> int:
        return len(self.centers)

    @classmethod
    def open(
        cls,
        client: redis.Redis,
        index_name: str,
        bundle_id: str,
        bits: int,
        centers: np.ndarray,
        centers_version: str,
    ) -> HashIndex:
        """Attach to Redis: keep the centers stored there (or store these), then load every item."""
        store = RedisStore(client, index_name, bundle_id)
        stored = store.load_centers()
        if stored is None:
            store.save_centers(centers, centers_version)
        else:
            centers, centers_version = stored
        index = cls(store, bits, centers, centers_version)
        index.reload()
        return index

    def reload(self) -> None:
        """Rebuild the in-memory structures from Redis (the cache is never the source of truth)."""
        sides = {m: _Side(BucketScan(self.bits, self.n_buckets)) for m in MODALITIES}
        for modality, side in sides.items():
            seen: dict[str, tuple[int, int, bytes]] = {}
            for ids, buckets, labels, codes in self.store.scan_items(modality):
                for item, bucket, label, code in zip(ids, buckets, labels, codes, strict=True):
                    seen[item] = (int(label), int(bucket), code)  # HSCAN may repeat a key
            if not seen:
                continue
            rows = sorted(seen.items(), key=lambda kv: kv[1][0])
            labels = np.array([r[1][0] for r in rows], dtype=np.int64)
            buckets = np.array([r[1][1] for r in rows], dtype=np.int64)
            codes = np.frombuffer(b"".join(r[1][2] for r in rows), dtype=np.uint8).reshape(len(rows), -1)
            side.scan.add(labels, codes, buckets)
            side.ids = {int(label): item for label, (item, _) in zip(labels, rows, strict=True)}
        with self._lock:
            self.sides = sides

    def _check_modality(self, modality: str) -> None:
        if modality not in MODALITIES:
            raise IndexInputError(f"unknown modality {modality!r}; expected one of {list(MODALITIES)}")

    def _check_codes(self, codes: np.ndarray) -> np.ndarray:
        codes = np.asarray(codes)
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != self.bits // 8:
            raise IndexInputError(
                f"codes must be packed uint8 of shape (n, {self.bits // 8}) for {self.bits}-bit codes, "
                f"got {codes.dtype} {codes.shape}"
            )
        return np.ascontiguousarray(codes)

    def route(self, codes: np.ndarray, probe: int) -> np.ndarray:
        """(n, probe) nearest buckets of packed codes, by Hamming distance over the head bits."""
        head = unpack_signs(codes[:, : self.head_bytes], self.head_bytes * 8)
        return nearest_centers(head, self.centers, probe)

    def upsert(self, items: Sequence[Item]) -> None:
        """Insert or replace items (by id); all or nothing, acknowledged once Redis has the batch."""
        if not items:
            return
        ids = [item.id for item in items]
        if len(set(ids)) != len(ids):
            raise IndexInputError("a batch may not name the same id twice")
        by_modality: dict[str, list[Item]] = {}
        for item in items:
            self._check_modality(item.modality)
            by_modality.setdefault(item.modality, []).append(item)
        prepared = {}
        for modality, group in by_modality.items():
            codes = self._check_codes(np.stack([np.asarray(i.code) for i in group]))
            prepared[modality] = (group, codes, self.route(codes, 1)[:, 0])
        if len(prepared) == 2:
            clash = {i.id for i in by_modality["image"]} & {i.id for i in by_modality["text"]}
            if clash:
                raise IndexInputError(f"id {sorted(clash)[0]!r} appears with both modalities in one batch")
        with self._lock:
            for modality, (group, codes, buckets) in prepared.items():
                labels = self.store.allocate_labels(len(group))
                previous = self.store.upsert(
                    modality, [i.id for i in group], buckets, labels, codes, [i.metadata for i in group]
                )
                side = self.sides[modality]
                stale = [p for p in previous if p is not None and p[1] in side.ids]
                if stale:
                    side.scan.remove(np.array([p[1] for p in stale]), np.array([p[0] for p in stale]))
                    for _, label in stale:
                        del side.ids[label]
                side.scan.add(labels, codes, buckets)
                side.ids.update(zip(labels.tolist(), (i.id for i in group), strict=True))

    def delete(self, item_id: str) -> str:
        """Remove an item; returns its modality. Raises :class:`ItemNotFoundError` if absent."""
        with self._lock:
            modality = self.store.modality_of(item_id)
            if modality is None:
                raise ItemNotFoundError(item_id)
            previous = self.store.delete(modality, item_id)
            side = self.sides[modality]
            if previous is not None and previous[1] in side.ids:
                side.scan.remove(np.array([previous[1]]), np.array([previous[0]]))
                del side.ids[previous[1]]
            return modality

    def get(self, item_id: str):
        modality = self.store.modality_of(item_id)
        stored = self.store.get(modality, item_id) if modality else None
        if stored is None:
            raise ItemNotFoundError(item_id)
        return stored

    def search(self, target: str, codes: np.ndarray, k: int, probe: int | None = None) -> list[list[Hit]]:
        """Top k items of modality ``target`` for each packed query code; ``probe=None`` scans all
        buckets (exact). Ranked by Hamming distance, ties by insertion order."""
        self._check_modality(target)
        codes = self._check_codes(codes)
        if k < 1:
            raise IndexInputError("k must be at least 1")
        probe = self.n_buckets if probe is None else probe
        if not 1 <= probe <= self.n_buckets:
            raise IndexInputError(f"probe must be between 1 and {self.n_buckets}")
        if probe == self.n_buckets:
            probes = np.broadcast_to(np.arange(self.n_buckets), (len(codes), self.n_buckets))
        else:
            probes = self.route(codes, probe)
        with self._lock:
            side = self.sides[target]
            distances, labels, buckets = side.scan.search(codes, probes, k)
            found = [
                [(side.ids[label], d, b) for d, label, b in zip(dr, lr, br, strict=True) if label >= 0]
                for dr, lr, br in zip(distances.tolist(), labels.tolist(), buckets.tolist(), strict=True)
            ]
        metadata = self.store.metadata(target, [item for row in found for item, _, _ in row])
        hits, position = [], 0
        for row in found:
            hits.append([Hit(item, d, b, metadata[position + j]) for j, (item, d, b) in enumerate(row)])
            position += len(row)
        return hits

    def stats(self) -> dict:
        return {
            "bits": self.bits,
            "head_bits": self.head_bytes * 8,
            "buckets": self.n_buckets,
            "centers_version": self.centers_version,
            "items": {m: len(s.scan) for m, s in self.sides.items()},
            "bucket_sizes": {m: s.scan.bucket_sizes().tolist() for m, s in self.sides.items()},
        }
