"""The durable half of the index: Redis holds every item, bucket counts, the centers and a change feed,
split over the index's S shards (``index.shards``), each one a :class:`ShardStore`.

A write is split by shard and each shard's part written by its own atomic script, the shards at once
(threads: a cluster's shards live on different nodes); it is acknowledged when every shard has its part
(with replicas, once the replicas the client asks for confirm each part: ``WAIT`` on the master holding
the shard, ``index.redis_calls``), and when only some do, :class:`PartialWriteError` names the ids stored.
Reads go to the shards a call needs, at once. Shard 0 holds what is not per item: the centers and the
``active`` record readers follow, written last when a re-bucket switches generations
(:meth:`RedisStore.activate`), so readers switch only once every shard is written. A search's lookup of
its hits is one pipeline over the shards (one round trip per node). With S = 1 every call is the one
shard's, as before shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import redis

from index.change_feed import Change
from index.errors import ModalityConflictError, PartialWriteError, StoreUnavailableError
from index.redis_calls import call
from index.redis_connection import UNREACHABLE_ERRORS, is_cluster
from index.redis_keys import BundleKeys, GenerationKeys
from index.shard_store import FEED_LENGTH, SLICE, WRITE_RULES, Group, ShardStore, StoredCodes, StoredItem, StoredItems
from index.shards import shard_count, shard_of
from index.stored_values import split_entry

__all__ = ["FEED_LENGTH", "SLICE", "WRITE_RULES", "Group", "RedisStore", "ShardStore", "StoredCodes", "StoredItem",
           "StoredItems"]  # fmt: skip

T = TypeVar("T")
_LOOKUP_FIELDS = 10_000  # labels per HMGET of a lookup's pipeline
_POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="shards")  # one round trip per shard, at once


def each(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run the calls at once (one alone runs here); their results in order, the first failure raised."""
    if len(calls) == 1:
        return [calls[0]()]
    futures = [_POOL.submit(fn) for fn in calls]
    return [future.result() for future in futures]


def _rows_by_shard(ids: Sequence[str], shards: int) -> dict[int, np.ndarray]:
    """Row numbers of ``ids`` per shard, in row order; shards without rows left out."""
    found = shard_of(ids, shards)
    return {int(shard): np.flatnonzero(found == shard) for shard in np.unique(found)}


def _part(group: Group, rows: np.ndarray) -> Group:
    return Group(group.modality, [group.ids[r] for r in rows], group.buckets[rows], group.codes[rows],
                 [group.metadata[r] for r in rows])  # fmt: skip


def split(group: Group, shards: int) -> list[tuple[int, Group]]:
    """A group's rows per shard: (shard, its part), shards without rows left out."""
    if shards == 1:
        return [(0, group)]
    return [(shard, _part(group, rows)) for shard, rows in _rows_by_shard(group.ids, shards).items()]


class RedisStore:
    """One index under one bundle, one generation, over all its shards."""

    def __init__(
        self,
        client: redis.Redis,
        index_name: str,
        bundle_id: str,
        generation: int = 0,
        shards: int | None = None,
    ) -> None:
        """``shards``: the index's S when the caller knows it, else read from its record (a new index gets
        ``index.shards``' default)."""
        self.client, self.index_name, self.bundle_id, self.generation = client, index_name, bundle_id, generation
        self.shards = shard_count(client, index_name) if shards is None else shards
        tagged = self.shards > 1 or is_cluster(client)
        self.parts = [
            ShardStore(client, index_name, bundle_id, generation, (shard, self.shards, tagged))
            for shard in range(self.shards)
        ]

    @property
    def bundle_keys(self) -> BundleKeys:
        """Shard 0's bundle keys: its ``active`` is the record readers follow."""
        return self.parts[0].bundle_keys

    @property
    def keys(self) -> GenerationKeys:
        """Shard 0's generation keys (where the centers are)."""
        return self.parts[0].keys

    def at(self, generation: int) -> RedisStore:
        """The same index and bundle, another generation."""
        return RedisStore(self.client, self.index_name, self.bundle_id, generation, self.shards)

    def active_generation(self) -> int | None:
        return self.parts[0].active_generation()

    def active(self) -> RedisStore:
        """The active generation, as it stands: of an index other code creates (generation 0 when none is
        active yet); unlike :meth:`open_active`, nothing is written."""
        return self.at(self.active_generation() or 0)

    def open_active(self, centers: np.ndarray, centers_version: str) -> RedisStore:
        """The active generation of this index; a new index starts generation 0 with these centers (a
        re-bucketed one keeps the centers it was re-bucketed with)."""
        active = self.active_generation()
        if active is not None:
            return self.at(active)
        self.save_centers(centers, centers_version)
        self.activate()
        return self

    def activate(self) -> None:
        """Make this generation the one writers check against on every shard, then, last, the one readers
        use (shard 0's record): one SET switches readers, once every shard is written."""
        for part in self.parts[1:]:
            part.activate()
        self.parts[0].activate()

    def set_rebuilding(self, seconds: int) -> bool:
        """Refuse writes on every shard while a re-bucket copies; False when one runs already (shard 0's
        flag is the lock)."""
        if not self.client.set(self.bundle_keys.rebuilding, 1, nx=True, ex=seconds):
            return False
        for part in self.parts[1:]:
            self.client.set(part.bundle_keys.rebuilding, 1, ex=seconds)
        return True

    def clear_rebuilding(self) -> None:
        """Writes resume, shard 0's lock last."""
        for part in [*self.parts[1:], self.parts[0]]:
            self.client.delete(part.bundle_keys.rebuilding)

    def drop(self) -> None:
        for part in self.parts:
            part.drop()

    def drop_bundle(self) -> None:
        """Delete every key of this index under this bundle, every generation, on every shard."""
        for part in self.parts:
            part.drop_bundle()

    def write(self, groups: Sequence[Group]) -> list[Change]:
        """Write a batch of one or both modalities, each shard's part in one atomic script, the shards at
        once; returns each shard's change as every follower of its feed will apply it. A batch holding an
        id stored as the other modality is refused whole (:class:`ModalityConflictError`): a shard's script
        checks only its own ids, so a batch over several shards is checked on all of them first. When some
        shards fail (unavailable, or an id stored as the other modality by another writer between the check
        and the write), :class:`PartialWriteError` names the ids the others stored (their changes on
        ``changes``)."""
        parts: dict[int, list[Group]] = {}
        for group in groups:
            for shard, part in split(group, self.shards):
                parts.setdefault(shard, []).append(part)
        if len(parts) == 1:
            ((shard, part),) = parts.items()
            return [self.parts[shard].write(part)]
        self._refuse_conflicts(groups)
        futures = {shard: _POOL.submit(self.parts[shard].write, part) for shard, part in parts.items()}
        changes, failed = [], None
        for future in futures.values():
            try:
                changes.append(future.result())
            except (StoreUnavailableError, ModalityConflictError) as exc:
                failed = failed or exc
        if failed is not None:
            if not changes:
                raise failed
            stored = [item.id for change in changes for item in change.items]
            message = f"{len(changes)} of {len(parts)} shards stored their part: {failed}"
            raise PartialWriteError(message, stored, changes) from failed
        return changes

    def _refuse_conflicts(self, groups: Sequence[Group]) -> None:
        """:class:`ModalityConflictError` when an id of the batch is stored as the other modality (one
        round trip per shard, at once)."""
        held = self.modalities_of([item for group in groups for item in group.ids])
        for group in groups:
            for item in group.ids:
                if held[item] not in (None, group.modality):
                    raise ModalityConflictError.of(item)

    def fill(self, groups: Sequence[Group], source: RedisStore) -> int:
        """:meth:`ShardStore.fill` on each shard's part, from the same shard of ``source``."""
        parts: dict[int, list[Group]] = {}
        for group in groups:
            for shard, part in split(group, self.shards):
                parts.setdefault(shard, []).append(part)
        calls = [lambda s=s, p=p: self.parts[s].fill(p, source.parts[s]) for s, p in parts.items()]
        return sum(each(calls))

    def copy(self, modality: str, ids: Sequence[str], buckets: np.ndarray, labels: np.ndarray,
             codes: np.ndarray, metadata: Sequence[str]) -> None:  # fmt: skip
        """:meth:`ShardStore.copy` on each shard's part (an item's label names its shard)."""
        labels = np.asarray(labels, dtype=np.int64)
        calls = []
        for shard in np.unique(labels % self.shards).tolist():
            rows = np.flatnonzero(labels % self.shards == shard)
            part = self.parts[shard]
            calls.append(lambda part=part, rows=rows: part.copy(modality, [ids[r] for r in rows], buckets[rows],
                                                                labels[rows], codes[rows],
                                                                [metadata[r] for r in rows]))  # fmt: skip
        each(calls)

    def _shard(self, item: str) -> ShardStore:
        return self.parts[int(shard_of([item], self.shards)[0])]

    def delete(self, modality: str, item: str) -> Change | None:
        return self._shard(item).delete(modality, item)

    def modalities_of(self, items: Sequence[str]) -> dict[str, str | None]:
        """The modality each id is stored under (None when absent): one round trip per shard, at once."""
        rows = _rows_by_shard(items, self.shards)
        calls = [lambda s=s, r=r: self.parts[s].modalities_of([items[i] for i in r]) for s, r in rows.items()]
        found: dict[str, str | None] = {}
        for part in each(calls):
            found.update(part)
        return {item: found[item] for item in items}

    def modality_of(self, item: str) -> str | None:
        return self._shard(item).modalities_of([item])[item]

    def get(self, modality: str, item: str) -> StoredItem | None:
        return self._shard(item).get(modality, item)

    def lookup(self, modality: str, labels: Sequence[int]) -> list[tuple[str, str] | None]:
        """(id, metadata JSON text) of each label, None for a label no longer stored. Over S > 1 shards, one
        pipeline of an ``HMGET`` per shard holding some of them: one round trip per node (redis-py's cluster
        pipeline writes to every node, then reads), on this thread (no hand-off to others: a search's tail
        latency is the point)."""
        if self.shards == 1:
            return self.parts[0].lookup(modality, labels)
        labels = np.asarray(labels, dtype=np.int64)
        shards = labels % self.shards
        wanted = {int(s): np.flatnonzero(shards == s) for s in np.unique(shards)}
        pipe = self.client.pipeline(transaction=False)
        for shard, rows in wanted.items():
            for start in range(0, len(rows), _LOOKUP_FIELDS):
                own = labels[rows[start : start + _LOOKUP_FIELDS]] // self.shards
                pipe.hmget(self.parts[shard].keys.entries[modality], own.tolist())
        replies = iter(call(pipe.execute))
        found: list[tuple[str, str] | None] = [None] * len(labels)
        for rows in wanted.values():
            entries = [entry for _ in range(0, len(rows), _LOOKUP_FIELDS) for entry in next(replies)]
            for row, entry in zip(rows.tolist(), entries, strict=True):
                found[row] = split_entry(entry) if entry else None
        return found

    def codes_in_order(self, modality: str) -> StoredCodes:
        """Every item's label, bucket and code over all shards, in label order."""
        parts = [p for p in each([lambda p=p: p.codes_in_order(modality) for p in self.parts]) if len(p.labels)]
        if len(parts) <= 1:
            return parts[0] if parts else self.parts[0].codes_in_order(modality)
        labels = np.concatenate([p.labels for p in parts])
        order = np.argsort(labels, kind="stable")
        return StoredCodes(labels[order], np.concatenate([p.buckets for p in parts])[order],
                           np.concatenate([p.codes for p in parts])[order])  # fmt: skip

    def items_in_order(self, modality: str) -> StoredItems:
        """Every item of a modality over all shards, in label order, with its id and metadata."""
        parts = [part.items_in_order(modality) for part in self.parts]
        if len(parts) == 1:
            return parts[0]
        labels = np.concatenate([p.labels for p in parts])
        order = np.argsort(labels, kind="stable")
        ids = [item for p in parts for item in p.ids]
        metadata = [meta for p in parts for meta in p.metadata]
        return StoredItems([ids[i] for i in order], labels[order], np.concatenate([p.buckets for p in parts])[order],
                           np.concatenate([p.codes for p in parts])[order],
                           [metadata[i] for i in order])  # fmt: skip

    def counts(self, modality: str) -> dict[int, int]:
        total: dict[int, int] = {}
        for part in self.parts:
            for bucket, count in part.counts(modality).items():
                total[bucket] = total.get(bucket, 0) + count
        return total

    def save_centers(self, centers: np.ndarray, version: str) -> None:
        self.parts[0].save_centers(centers, version)

    def load_centers(self) -> tuple[np.ndarray, str] | None:
        return self.parts[0].load_centers()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except UNREACHABLE_ERRORS:
            return False
