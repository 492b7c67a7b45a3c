"""The durable half of the index: Redis holds every item, bucket counts and the centers.

Keys live under ``xmh:{index}:{bundle_id}:`` (two bundles' codes never mix), then under a
*generation* ``g{n}:`` (one set of centers and the items bucketed by them); ``…:active`` names the
generation readers use, and ``…:rebuilding`` is set while a re-bucket copies items into the next one:


- ``items:{modality}``  hash id → bucket (u32 BE) · label (u64 BE) · packed code
- ``meta:{modality}``   hash id → user metadata (JSON)
- ``counts:{modality}`` hash bucket → number of items
- ``centers``           the bucket centers (``.npy`` bytes, no pickle); ``info`` hash: version, bits
- ``next_label``        counter giving labels in insertion order

A batch, of one modality or both, is written by one Lua script, which Redis runs atomically: it checks
every id first (an id held by the other modality fails the whole batch, nothing written; so does a
rebuild in progress), then writes items, metadata and counts together. The call returns only after Redis has applied it
(and, with ``appendfsync always`` as the deploy config sets, written it to the AOF), so a returned
call is an acknowledged write.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import redis

from index.errors import ModalityConflictError, StoreUnavailableError

MODALITIES = ("image", "text")
_HEADER = struct.Struct(">IQ")  # bucket, label
_READ_CHUNK = 10_000  # ids per HMGET when reading a whole modality

# KEYS: items, meta, counts of the image modality, the same of the text modality, the rebuild flag.
# ARGV: rebuild check ('1' or '0'), n, then per item: modality (0 image, 1 text), id, value, metadata.
_UPSERT = """
if ARGV[1] == '1' and redis.call('EXISTS', KEYS[7]) == 1 then
  return redis.error_reply('REBUILDING')
end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local other = (1 - tonumber(ARGV[3 + 4 * i])) * 3 + 1
  if redis.call('HEXISTS', KEYS[other], ARGV[4 + 4 * i]) == 1 then
    return redis.error_reply('CONFLICT ' .. ARGV[4 + 4 * i])
  end
end
local previous = {}
for i = 0, n - 1 do
  local base = tonumber(ARGV[3 + 4 * i]) * 3
  local id, value, meta = ARGV[4 + 4 * i], ARGV[5 + 4 * i], ARGV[6 + 4 * i]
  local old = redis.call('HGET', KEYS[base + 1], id)
  if old then
    redis.call('HINCRBY', KEYS[base + 3], struct.unpack('>I4', old), -1)
    previous[i + 1] = string.sub(old, 1, 12)
  else
    previous[i + 1] = ''
  end
  redis.call('HSET', KEYS[base + 1], id, value)
  redis.call('HSET', KEYS[base + 2], id, meta)
  redis.call('HINCRBY', KEYS[base + 3], struct.unpack('>I4', value), 1)
end
return previous
"""

_DELETE = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('REBUILDING')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return '' end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], struct.unpack('>I4', old), -1)
return string.sub(old, 1, 12)
"""


@dataclass(frozen=True)
class Group:
    """One modality's part of a batch to write, row-aligned."""

    modality: str
    ids: Sequence[str]
    buckets: np.ndarray
    labels: np.ndarray
    codes: np.ndarray  # packed uint8
    metadata: Sequence[str]  # JSON text


@dataclass(frozen=True)
class StoredItems:
    """All items of a modality, row-aligned, in label (insertion) order."""

    ids: list[str]
    labels: np.ndarray  # int64
    buckets: np.ndarray  # int64
    codes: np.ndarray  # packed uint8 (n, bits / 8)
    metadata: list[str]  # JSON text


@dataclass(frozen=True)
class StoredItem:
    id: str
    modality: str
    bucket: int
    label: int
    code: bytes
    metadata: dict


def _other(modality: str) -> str:
    return MODALITIES[1 - MODALITIES.index(modality)]


def _header(raw: bytes) -> tuple[int, int] | None:
    """(bucket, label) of a previous value returned by a script, or None when there was none."""
    return _HEADER.unpack(raw[: _HEADER.size]) if raw else None


class RedisStore:
    """Items, counts and centers of one index under one bundle, in Redis."""

    def __init__(self, client: redis.Redis, index_name: str, bundle_id: str, generation: int = 0) -> None:
        self.client = client
        self.index_name, self.bundle_id, self.generation = index_name, bundle_id, generation
        self.base = f"xmh:{index_name}:{bundle_id}:"
        self.prefix = f"{self.base}g{generation}:"
        self.rebuild_key = self.base + "rebuilding"
        self._upsert = client.register_script(_UPSERT)
        self._delete = client.register_script(_DELETE)

    def at(self, generation: int) -> RedisStore:
        """The same index and bundle, another generation."""
        return RedisStore(self.client, self.index_name, self.bundle_id, generation)

    def active_generation(self) -> int | None:
        value = self._call(self.client.get, self.base + "active")
        return None if value is None else int(value)

    def activate(self) -> None:
        """Make this generation the one readers use: one SET, so the switch is atomic."""
        self._call(self.client.set, self.base + "active", self.generation)

    def drop(self) -> None:
        """Delete every key of this generation (UNLINK frees memory in the background)."""
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=1000))
        if keys:
            self._call(self.client.unlink, *keys)

    def key(self, name: str) -> str:
        return self.prefix + name

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.ResponseError as exc:
            if str(exc).startswith("CONFLICT "):
                item = str(exc).removeprefix("CONFLICT ")
                raise ModalityConflictError(f"id {item!r} is already stored as another modality") from exc
            if str(exc).startswith("REBUILDING"):
                raise StoreUnavailableError("the index is being re-bucketed: writes resume when it ends") from exc
            raise StoreUnavailableError(f"Redis refused the operation: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc

    def allocate_labels(self, n: int) -> np.ndarray:
        last = self._call(self.client.incrby, self.key("next_label"), n)
        return np.arange(last - n + 1, last + 1, dtype=np.int64)

    def upsert(
        self,
        modality: str,
        ids: Sequence[str],
        buckets: np.ndarray,
        labels: np.ndarray,
        codes: np.ndarray,
        metadata: Sequence[str],
        during_rebuild: bool = False,
    ) -> list[tuple[int, int] | None]:
        """Write one modality's batch atomically (``metadata``: each item's JSON text); returns each id's
        previous (bucket, label), None if it was new."""
        [previous] = self.upsert_groups(
            [Group(modality, ids, buckets, labels, codes, metadata)], during_rebuild=during_rebuild
        )
        return previous

    def upsert_groups(
        self, groups: Sequence[Group], during_rebuild: bool = False
    ) -> list[list[tuple[int, int] | None]]:
        """Write a batch of one or both modalities in one atomic script: all of it or nothing. Returns,
        per group, each id's previous (bucket, label), None if it was new.

        Refused while a re-bucket runs, except for the re-bucket's own copy (``during_rebuild``)."""
        args: list = ["0" if during_rebuild else "1", sum(len(g.ids) for g in groups)]
        for group in groups:
            side = MODALITIES.index(group.modality)
            rows = zip(group.ids, group.buckets, group.labels, group.codes, group.metadata, strict=True)
            for item, bucket, label, code, meta in rows:
                args += [side, item, _HEADER.pack(int(bucket), int(label)) + code.tobytes(), meta]
        keys = [self.key(f"{kind}:{m}") for m in MODALITIES for kind in ("items", "meta", "counts")]
        previous = [_header(raw) for raw in self._call(self._upsert, keys=[*keys, self.rebuild_key], args=args)]
        out, start = [], 0
        for group in groups:
            out.append(previous[start : start + len(group.ids)])
            start += len(group.ids)
        return out

    def delete(self, modality: str, item: str) -> tuple[int, int] | None:
        keys = [self.key(f"items:{modality}"), self.key(f"meta:{modality}"), self.key(f"counts:{modality}")]
        keys.append(self.rebuild_key)
        return _header(self._call(self._delete, keys=keys, args=[item]))

    def modalities_of(self, items: Sequence[str]) -> dict[str, str | None]:
        """The modality each id is stored under (None when absent), in one round trip."""
        if not items:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for modality in MODALITIES:
            pipe.hmget(self.key(f"items:{modality}"), list(items))
        found = self._call(pipe.execute)
        return {
            item: next((m for m, values in zip(MODALITIES, found, strict=True) if values[i] is not None), None)
            for i, item in enumerate(items)
        }

    def modality_of(self, item: str) -> str | None:
        return self.modalities_of([item])[item]

    def get(self, modality: str, item: str) -> StoredItem | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.key(f"items:{modality}"), item)
        pipe.hget(self.key(f"meta:{modality}"), item)
        value, meta = self._call(pipe.execute)
        if value is None:
            return None
        bucket, label = _HEADER.unpack(value[: _HEADER.size])
        return StoredItem(item, modality, bucket, label, value[_HEADER.size :], json.loads(meta or "{}"))

    def scan_items(
        self, modality: str, chunk: int = 10_000
    ) -> Iterator[tuple[list[str], np.ndarray, np.ndarray, list[bytes]]]:
        """All items of a modality in chunks: (ids, buckets, labels, codes) — the rebuild's source."""
        cursor = 0
        while True:
            cursor, page = self._call(self.client.hscan, self.key(f"items:{modality}"), cursor, count=chunk)
            if page:
                ids = [k.decode() for k in page]
                headers = [_HEADER.unpack(v[: _HEADER.size]) for v in page.values()]
                buckets = np.array([h[0] for h in headers], dtype=np.int64)
                labels = np.array([h[1] for h in headers], dtype=np.int64)
                yield ids, buckets, labels, [v[_HEADER.size :] for v in page.values()]
            if cursor == 0:
                return

    def items_in_order(self, modality: str) -> StoredItems:
        """Every item of a modality in label (insertion) order, with its metadata JSON text.

        HSCAN may return a key twice; each id is kept once."""
        rows: dict[str, tuple[int, int, bytes]] = {}
        for ids, buckets, labels, codes in self.scan_items(modality):
            rows.update(zip(ids, zip(labels.tolist(), buckets.tolist(), codes, strict=True), strict=True))
        ordered = sorted(rows.items(), key=lambda kv: kv[1][0])
        if not ordered:
            return StoredItems([], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.uint8), [])
        ids = [item for item, _ in ordered]
        metadata = []
        for start in range(0, len(ids), _READ_CHUNK):
            raw = self._call(self.client.hmget, self.key(f"meta:{modality}"), ids[start : start + _READ_CHUNK])
            metadata += [m.decode() if m else "{}" for m in raw]
        return StoredItems(
            ids,
            np.array([row[0] for _, row in ordered], dtype=np.int64),
            np.array([row[1] for _, row in ordered], dtype=np.int64),
            np.frombuffer(b"".join(row[2] for _, row in ordered), dtype=np.uint8).reshape(len(ordered), -1),
            metadata,
        )

    def counts(self, modality: str) -> dict[int, int]:
        raw = self._call(self.client.hgetall, self.key(f"counts:{modality}"))
        return {int(b): int(c) for b, c in raw.items()}

    def save_centers(self, centers: np.ndarray, version: str) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(centers, dtype=np.int8), allow_pickle=False)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.key("centers"), buffer.getvalue())
        pipe.hset(self.key("info"), mapping={"centers_version": version, "k": len(centers)})
        self._call(pipe.execute)

    def load_centers(self) -> tuple[np.ndarray, str] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.key("centers"))
        pipe.hget(self.key("info"), "centers_version")
        raw, version = self._call(pipe.execute)
        if raw is None:
            return None
        return np.load(io.BytesIO(raw), allow_pickle=False), version.decode()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.ConnectionError, redis.TimeoutError):
            return False
