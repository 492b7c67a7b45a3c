"""The two-level cross-modal Hamming index the service calls.

Level 1 routes a code to buckets: the nearest binary centers by Hamming distance over the code's
head bits (UDDH's shared code, or the whole code for methods without one). Level 2 scans the packed
codes inside the probed buckets (``index.scan``). Redis (``index.store``) is the source of truth;
the FAISS structures are a cache rebuilt from it by :meth:`HashIndex.open`.

One *generation* (centers + items bucketed by them) is served at a time, held in an immutable
:class:`Generation` that a reader takes once per call; :meth:`HashIndex.refresh` loads a newer
generation made by a re-bucket (``index.rebuild``) completely before swapping the reference, so a
reader never sees a half-built index.

Writers take a write lock: labels are allocated, the batch is written to Redis (the acknowledgement),
and only then applied in memory, so memory never holds an unacknowledged item and label order is
insertion order. The in-memory structures have their own lock, held by a writer only while applying a
batch and by a search only around its scan, so searches never wait for a Redis round trip.

A search never touches Redis: each item's id and metadata (its JSON text, as stored) are kept in
memory beside its code, so searches keep answering while Redis is unreachable; writes then fail with
:class:`StoreUnavailableError` and nothing is applied.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import redis

from index.centers import CenterIndex
from index.errors import IndexInputError, ItemNotFoundError
from index.scan import BucketScan
from index.store import MODALITIES, Group, RedisStore, StoredItem


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
    """In-memory state of one modality: the bucket scan and label → (id, metadata JSON text)."""

    scan: BucketScan
    entries: dict[int, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Generation:
    """Centers, the Redis store of their generation, and the in-memory scan of each modality."""

    store: RedisStore
    centers: CenterIndex
    version: str
    sides: dict[str, _Side]

    @classmethod
    def load(cls, store: RedisStore, bits: int) -> Generation:
        """Read a generation's centers and every item from Redis into fresh FAISS structures."""
        stored = store.load_centers()
        if stored is None:
            raise IndexInputError(f"generation {store.generation} of {store.base} has no centers")
        centers, version = stored
        sides = {m: _Side(BucketScan(bits, len(centers))) for m in MODALITIES}
        for modality, side in sides.items():
            items = store.items_in_order(modality)
            if items.ids:
                side.scan.add(items.labels, items.codes, items.buckets)
                entries = zip(items.ids, items.metadata, strict=True)
                side.entries = dict(zip(items.labels.tolist(), entries, strict=True))
        return cls(store, CenterIndex(centers), version, sides)


class HashIndex:
    """Items of both modalities under one bundle's code space, searchable across modalities."""

    def __init__(self, bits: int, generation: Generation) -> None:
        if bits % 8:
            raise ValueError(f"code length {bits} is not a multiple of 8")
        head_bits = generation.centers.centers.shape[1]
        if head_bits % 8 or head_bits > bits:
            raise ValueError(f"head of {head_bits} bits must be a multiple of 8 and at most {bits}")
        self.bits = bits
        self.head_bytes = head_bits // 8
        self.generation = generation
        self._write_lock = threading.Lock()
        self._memory_lock = threading.Lock()

    @classmethod
    def open(
        cls, client: redis.Redis, index_name: str, bundle_id: str, bits: int, centers: np.ndarray, centers_version: str
    ) -> HashIndex:
        """Attach to Redis and load the active generation; a new index starts generation 0 with these
        centers (a re-bucketed one keeps the centers it was re-bucketed with)."""
        store = RedisStore(client, index_name, bundle_id)
        active = store.active_generation()
        if active is None:
            store.save_centers(centers, centers_version)
            store.activate()
        else:
            store = store.at(active)
        return cls(bits, Generation.load(store, bits))

    # The current generation's parts, for callers that read one of them.
    @property
    def store(self) -> RedisStore:
        return self.generation.store

    @property
    def centers(self) -> np.ndarray:
        return self.generation.centers.centers

    @property
    def sides(self) -> dict[str, _Side]:
        return self.generation.sides

    @property
    def n_buckets(self) -> int:
        return len(self.generation.centers)

    def refresh(self) -> bool:
        """Switch to the active generation if a re-bucket made a new one; True when it switched."""
        active = self.generation.store.active_generation()
        if active is None or active == self.generation.store.generation:
            return False
        fresh = Generation.load(self.generation.store.at(active), self.bits)
        with self._write_lock:
            self.generation = fresh
        return True

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
        return self.generation.centers.route(codes, probe)

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
        codes = {m: self._check_codes(np.stack([np.asarray(i.code) for i in g])) for m, g in by_modality.items()}
        if len(by_modality) == 2:
            clash = {i.id for i in by_modality["image"]} & {i.id for i in by_modality["text"]}
            if clash:
                raise IndexInputError(f"id {sorted(clash)[0]!r} appears with both modalities in one batch")
        with self._write_lock:
            generation = self.generation
            labels = generation.store.allocate_labels(len(items))
            groups, start = [], 0
            for modality, group in by_modality.items():
                groups.append(
                    Group(
                        modality,
                        [i.id for i in group],
                        generation.centers.route(codes[modality], 1)[:, 0],
                        labels[start : start + len(group)],
                        codes[modality],
                        [json.dumps(i.metadata) for i in group],
                    )
                )
                start += len(group)
            previous = generation.store.upsert_groups(groups)  # the acknowledgement: all groups or none
            with self._memory_lock:
                for group, replaced in zip(groups, previous, strict=True):
                    side = generation.sides[group.modality]
                    stale = [p for p in replaced if p is not None and p[1] in side.entries]
                    if stale:
                        side.scan.remove(np.array([p[1] for p in stale]), np.array([p[0] for p in stale]))
                        for _, label in stale:
                            del side.entries[label]
                    side.scan.add(group.labels, group.codes, group.buckets)
                    entries = zip(group.ids, group.metadata, strict=True)
                    side.entries.update(zip(group.labels.tolist(), entries, strict=True))

    def delete(self, item_id: str) -> str:
        """Remove an item; returns its modality. Raises :class:`ItemNotFoundError` if absent."""
        with self._write_lock:
            generation = self.generation
            modality = generation.store.modality_of(item_id)
            if modality is None:
                raise ItemNotFoundError(item_id)
            previous = generation.store.delete(modality, item_id)
            side = generation.sides[modality]
            with self._memory_lock:
                if previous is not None and previous[1] in side.entries:
                    side.scan.remove(np.array([previous[1]]), np.array([previous[0]]))
                    del side.entries[previous[1]]
            return modality

    def get(self, item_id: str) -> StoredItem:
        store = self.generation.store
        modality = store.modality_of(item_id)
        stored = store.get(modality, item_id) if modality else None
        if stored is None:
            raise ItemNotFoundError(item_id)
        return stored

    def search(self, target: str, codes: np.ndarray, k: int, probe: int | None = None) -> list[list[Hit]]:
        """Top k items of modality ``target`` for each packed query code; ``probe=None`` scans all
        buckets (exact). Ranked by Hamming distance; ties by the bucket's rank in the query's route (the
        semantically nearer bucket first), then insertion order."""
        self._check_modality(target)
        codes = self._check_codes(codes)
        if k < 1:
            raise IndexInputError("k must be at least 1")
        generation = self.generation
        n_buckets = len(generation.centers)
        probe = n_buckets if probe is None else probe
        if not 1 <= probe <= n_buckets:
            raise IndexInputError(f"probe must be between 1 and {n_buckets}")
        probes = generation.centers.route(codes, probe)
        side = generation.sides[target]
        with self._memory_lock:
            distances, labels, buckets = side.scan.search(codes, probes, k)
            found = [
                [(side.entries[label], d, b) for d, label, b in zip(dr, lr, br, strict=True) if label >= 0]
                for dr, lr, br in zip(distances.tolist(), labels.tolist(), buckets.tolist(), strict=True)
            ]
        return [[Hit(item, d, b, json.loads(meta)) for (item, meta), d, b in row] for row in found]

    def stats(self) -> dict:
        generation = self.generation
        return {
            "bits": self.bits,
            "head_bits": self.head_bytes * 8,
            "buckets": len(generation.centers),
            "generation": generation.store.generation,
            "centers_version": generation.version,
            "items": {m: len(s.scan) for m, s in generation.sides.items()},
            "bucket_sizes": {m: s.scan.bucket_sizes().tolist() for m, s in generation.sides.items()},
        }
