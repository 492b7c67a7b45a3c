"""The durable half of the index: Redis holds every item, bucket counts, the centers and a change feed.

Keys live under ``xmh:{index}:{bundle_id}:`` (two bundles' codes never mix), then under a
*generation* ``g{n}:`` (one set of centers and the items bucketed by them); ``…:active`` names the
generation readers use, and ``…:rebuilding`` is set while a re-bucket copies items into the next one:

- ``items:{modality}``  hash id → bucket (u32 BE) · label (u64 BE) · packed code
- ``meta:{modality}``   hash id → user metadata (JSON)
- ``labels:{modality}`` hash label (decimal) → id: what a search resolves its ranked labels with, since a
  serving process keeps only codes and labels in memory (``docs/memory.md``)
- ``counts:{modality}`` hash bucket → number of items
- ``centers``           the bucket centers (``.npy`` bytes, no pickle); ``info`` hash: version, bits
- ``next_label``        counter giving labels in insertion order
- ``seq`` and ``feed``  the change feed: a stream with one entry per write, id ``<seq>-0``

A write (a batch of one modality or both, or a delete) is one Lua script, which Redis runs atomically:
it checks every id first (an id held by the other modality fails the whole batch, nothing written; so
does a rebuild in progress), allocates the batch's labels, writes items, metadata and counts, and
appends the change to the feed. Every process serving the index applies the feed in order
(``index.engine``), so they all hold the same items in the same order: label order is feed order. The
call returns only after Redis has applied it (and, with ``appendfsync always`` as the deploy config
sets, written it to the AOF), so a returned call is an acknowledged write.

The feed keeps about :data:`FEED_LENGTH` entries; a process that falls further behind reloads the
generation from the hashes, which always hold everything.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template

import msgpack
import numpy as np
import redis

from index.errors import FeedGapError, ModalityConflictError, StoreUnavailableError

MODALITIES = ("image", "text")
FEED_LENGTH = 1000  # change-feed entries Redis keeps (approximately: MAXLEN ~)
_HEADER = struct.Struct(">IQ")  # bucket, label
_READ_CHUNK = 10_000  # labels per lookup when reading a whole modality: few round trips, no long block of Redis
_SCAN_COUNT = 10_000  # SCAN/HSCAN's per-step hint, for the same reason
_FEED_READ = 500  # feed entries per XRANGE/XREAD: half a feed, so a catch-up takes a few reads at most
_LOOKUP_CHUNK = 4000  # labels per HMGET in the lookup script: below Lua's limit on unpacked values (~8000)

# KEYS: items, meta, counts of the image modality; the same of the text modality; the rebuild flag;
#       next_label; seq; feed; labels of the image modality, of the text modality.
# ARGV: mode, n, feed length, then per item: side (0 image, 1 text), id, value, metadata.
#   'write': value = bucket (u32 BE) · code. Labels are allocated here and put after the bucket; the batch
#            is appended to the feed; refused while a re-bucket runs. Returns {seq, first label, previous…}.
#   'copy':  value = bucket · label (u64 BE) · code, kept as given; next_label is raised past them and
#            nothing is appended to the feed. Returns {0, 0, previous…}.
# previous: each id's former bucket · label (12 bytes), or '' when it was new.
_UPSERT = """
local write = ARGV[1] == 'write'
if write and redis.call('EXISTS', KEYS[7]) == 1 then
  return redis.error_reply('REBUILDING')
end
local n = tonumber(ARGV[2])
for i = 0, n - 1 do
  local other = (1 - tonumber(ARGV[4 + 4 * i])) * 3 + 1
  if redis.call('HEXISTS', KEYS[other], ARGV[5 + 4 * i]) == 1 then
    return redis.error_reply('CONFLICT ' .. ARGV[5 + 4 * i])
  end
end
local first, last = 0, 0
if write then
  first = redis.call('INCRBY', KEYS[8], n) - n + 1
end
local out, changed = {0, first}, {}
for i = 0, n - 1 do
  local side = tonumber(ARGV[4 + 4 * i])
  local base = side * 3
  local id, value, meta = ARGV[5 + 4 * i], ARGV[6 + 4 * i], ARGV[7 + 4 * i]
  local label = first + i
  if write then
    value = string.sub(value, 1, 4) .. struct.pack('>I8', label) .. string.sub(value, 5)
  else
    label = struct.unpack('>I8', value, 5)
    last = math.max(last, label)
  end
  local old = redis.call('HGET', KEYS[base + 1], id)
  local previous = ''
  if old then
    redis.call('HINCRBY', KEYS[base + 3], struct.unpack('>I4', old), -1)
    redis.call('HDEL', KEYS[11 + side], string.format('%d', struct.unpack('>I8', old, 5)))
    previous = string.sub(old, 1, 12)
  end
  redis.call('HSET', KEYS[base + 1], id, value)
  redis.call('HSET', KEYS[base + 2], id, meta)
  redis.call('HSET', KEYS[11 + side], string.format('%d', label), id)
  redis.call('HINCRBY', KEYS[base + 3], struct.unpack('>I4', value), 1)
  out[i + 3] = previous
  changed[i + 1] = {side, id, value, meta, previous}
end
if write then
  out[1] = redis.call('INCR', KEYS[9])
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[3], out[1] .. '-0', 'items', cmsgpack.pack(changed))
elseif last > tonumber(redis.call('GET', KEYS[8]) or '0') then
  redis.call('SET', KEYS[8], last)
end
return out
"""

# KEYS: items, meta, counts of the item's modality; the rebuild flag; seq; feed; labels of the modality.
# ARGV: id, side, feed length. Returns {seq, previous}, {0, ''} when the id is absent.
_DELETE = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('REBUILDING')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return {0, ''} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], struct.unpack('>I4', old), -1)
redis.call('HDEL', KEYS[7], string.format('%d', struct.unpack('>I8', old, 5)))
local previous = string.sub(old, 1, 12)
local seq = redis.call('INCR', KEYS[5])
local changed = {{tonumber(ARGV[2]), ARGV[1], '', '', previous}}
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'items', cmsgpack.pack(changed))
return {seq, previous}
"""

# A search's ranked labels → ids and metadata, in one call whatever their number. KEYS: labels, meta of
# one modality. ARGV: labels. Returns, msgpack'd (one string to decode, not 2k replies): ids (false where a
# label is gone) and the metadata of the ids found, in order.
# HMGET takes at most _LOOKUP_CHUNK arguments at a time: Lua's unpack is limited to ~8000 values.
_LOOKUP = Template("""
local function hmget(key, names)
  local values = {}
  for first = 1, #names, $chunk do
    local part = redis.call('HMGET', key, unpack(names, first, math.min(first + $chunk - 1, #names)))
    for i = 1, #part do values[first + i - 1] = part[i] end
  end
  return values
end
local ids = hmget(KEYS[1], ARGV)
local found = {}
for i = 1, #ARGV do
  if ids[i] then found[#found + 1] = ids[i] end
end
return cmsgpack.pack(ids, hmget(KEYS[2], found))
""").substitute(chunk=_LOOKUP_CHUNK)

# One HSCAN step of an items hash, its values concatenated. KEYS: items. ARGV: cursor, count.
# Returns {next cursor, number of values, values}.
_SCAN_VALUES = """
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields, values, n = page[2], {}, 0
for i = 2, #fields, 2 do
  n = n + 1
  values[n] = fields[i]
end
return {page[1], n, table.concat(values)}
"""

# Completing a label map. KEYS: items, labels of one modality. ARGV: label, id, label, id, …
# Writes an entry only where the id still holds that label; returns how many were written.
_INDEX_LABELS = """
local written = 0
for i = 1, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i + 1])
  if value and string.format('%d', struct.unpack('>I8', value, 5)) == ARGV[i] then
    written = written + redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  end
end
return written
"""


def _record(width: int) -> np.dtype:
    """A stored value as a numpy record: bucket (u32 BE) · label (u64 BE) · packed code."""
    return np.dtype([("bucket", ">u4"), ("label", ">u8"), ("code", np.uint8, (width - _HEADER.size,))])


@dataclass(frozen=True)
class Group:
    """One modality's part of a batch to write, row-aligned."""

    modality: str
    ids: Sequence[str]
    buckets: np.ndarray
    codes: np.ndarray  # packed uint8
    metadata: Sequence[str]  # JSON text


@dataclass(frozen=True)
class ChangedItem:
    """One item of a change: what it is now (None once deleted) and the (bucket, label) it replaced."""

    modality: str
    id: str
    now: tuple[int, int, bytes] | None  # bucket, label, packed code
    previous: tuple[int, int] | None


@dataclass(frozen=True)
class Change:
    """One entry of the change feed: a written batch or a deleted item, numbered in write order."""

    seq: int
    items: list[ChangedItem]


@dataclass(frozen=True)
class StoredCodes:
    """What ranking needs of every item of a modality, row-aligned, in label (insertion) order."""

    labels: np.ndarray  # int64
    buckets: np.ndarray  # int64
    codes: np.ndarray  # packed uint8 (n, bits / 8)


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


def _header(raw: bytes) -> tuple[int, int] | None:
    """(bucket, label) of a stored value's header, or None for the empty string (no value)."""
    return _HEADER.unpack(raw[: _HEADER.size]) if raw else None


def _changed(side: int, item: bytes, value: bytes, _metadata: bytes, previous: bytes) -> ChangedItem:
    """A feed row as a change; its metadata is not kept: processes read it from Redis with search results."""
    bucket, label = _HEADER.unpack(value[: _HEADER.size]) if value else (0, 0)
    now = (bucket, label, value[_HEADER.size :]) if value else None
    return ChangedItem(MODALITIES[side], item.decode(), now, _header(previous))


def _decode_feed(entries: list) -> list[Change]:
    """Feed entries as returned by XRANGE/XREAD: (id ``<seq>-0``, {items: msgpack}) → changes."""
    return [
        Change(int(entry_id.split(b"-")[0]), [_changed(*row) for row in msgpack.unpackb(fields[b"items"], raw=True)])
        for entry_id, fields in entries
    ]


class RedisStore:
    """Items, counts, centers and the change feed of one index under one bundle, in Redis."""

    def __init__(self, client: redis.Redis, index_name: str, bundle_id: str, generation: int = 0) -> None:
        self.client = client
        self.index_name, self.bundle_id, self.generation = index_name, bundle_id, generation
        self.base = f"xmh:{index_name}:{bundle_id}:"
        self.prefix = f"{self.base}g{generation}:"
        self.rebuild_key = self.base + "rebuilding"
        self._upsert = client.register_script(_UPSERT)
        self._delete = client.register_script(_DELETE)
        self._lookup = client.register_script(_LOOKUP)
        self._scan_values = client.register_script(_SCAN_VALUES)
        self._index_labels = client.register_script(_INDEX_LABELS)

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
        keys = list(self.client.scan_iter(match=self.prefix + "*", count=_SCAN_COUNT))
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

    def _keys(self) -> list[str]:
        """The upsert script's KEYS."""
        keys = [self.key(f"{kind}:{m}") for m in MODALITIES for kind in ("items", "meta", "counts")]
        labels = [self.key(f"labels:{m}") for m in MODALITIES]
        return [*keys, self.rebuild_key, self.key("next_label"), self.key("seq"), self.key("feed"), *labels]

    def write(self, groups: Sequence[Group]) -> Change:
        """Write a batch of one or both modalities in one atomic script, all of it or nothing, and append
        it to the change feed; returns the change as every follower of the feed will apply it. Labels
        are allocated by the script, so label order is feed order. Refused while a re-bucket runs."""
        rows = [
            (group.modality, item, int(bucket), code.tobytes(), meta)
            for group in groups
            for item, bucket, code, meta in zip(group.ids, group.buckets, group.codes, group.metadata, strict=True)
        ]
        args: list = ["write", len(rows), FEED_LENGTH]
        for modality, item, bucket, code, meta in rows:
            args += [MODALITIES.index(modality), item, struct.pack(">I", bucket) + code, meta]
        seq, first, *previous = self._call(self._upsert, keys=self._keys(), args=args)
        items = [
            ChangedItem(modality, item, (bucket, first + row, code), _header(previous[row]))
            for row, (modality, item, bucket, code, _) in enumerate(rows)
        ]
        return Change(seq, items)

    def copy(
        self,
        modality: str,
        ids: Sequence[str],
        buckets: np.ndarray,
        labels: np.ndarray,
        codes: np.ndarray,
        metadata: Sequence[str],
    ) -> None:
        """Write items with the labels given and no feed entry, atomically: for a generation no process
        follows yet (a re-bucket's next generation, allowed while it runs) and for preloading a
        benchmark's database before any service starts. Processes following the feed do not see these
        items until they load the generation again."""
        args: list = ["copy", len(ids), FEED_LENGTH]
        side = MODALITIES.index(modality)
        for item, bucket, label, code, meta in zip(ids, buckets, labels, codes, metadata, strict=True):
            args += [side, item, _HEADER.pack(int(bucket), int(label)) + code.tobytes(), meta]
        self._call(self._upsert, keys=self._keys(), args=args)

    def delete(self, modality: str, item: str) -> Change | None:
        """Delete an item and append that to the feed; None when it was absent."""
        keys = [self.key(f"items:{modality}"), self.key(f"meta:{modality}"), self.key(f"counts:{modality}")]
        keys += [self.rebuild_key, self.key("seq"), self.key("feed"), self.key(f"labels:{modality}")]
        seq, previous = self._call(self._delete, keys=keys, args=[item, MODALITIES.index(modality), FEED_LENGTH])
        if not seq:
            return None
        return Change(seq, [ChangedItem(modality, item, None, _header(previous))])

    def feed_position(self) -> int:
        """The number of the last change written (0 before the first)."""
        return int(self._call(self.client.get, self.key("seq")) or 0)

    def changes_after(self, seq: int, until: int | None = None) -> list[Change]:
        """The changes numbered after ``seq`` (up to ``until``), in order; :class:`FeedGapError` when some
        of them have been trimmed from the feed."""
        end = "+" if until is None else f"{until}-0"
        changes: list[Change] = []
        while True:
            start = f"{(changes[-1].seq if changes else seq) + 1}-0"
            page = _decode_feed(self._call(self.client.xrange, self.key("feed"), start, end, count=_FEED_READ))
            changes += page
            if len(page) < _FEED_READ:
                break
        numbers = [change.seq for change in changes]
        wanted = seq + len(changes) if until is None else until
        if numbers != list(range(seq + 1, wanted + 1)):
            raise FeedGapError(f"changes {seq + 1}…{wanted} of {self.prefix}feed are no longer all in the feed")
        return changes

    def wait_for_changes(self, seq: int, block_ms: int) -> list[Change]:
        """The changes after ``seq`` already in the feed, or, when there are none, those that arrive
        within ``block_ms`` (possibly none). Not checked for gaps: :meth:`changes_after` is."""
        found = self._call(self.client.xread, {self.key("feed"): f"{seq}-0"}, count=_FEED_READ, block=block_ms)
        return _decode_feed(found[0][1]) if found else []

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

    def lookup(self, modality: str, labels: Sequence[int]) -> list[tuple[str, str] | None]:
        """(id, metadata JSON text) of each label, None for a label no longer stored (replaced or deleted
        since it was ranked): what a search resolves its ranked labels with, in one round trip."""
        if not len(labels):
            return []
        keys = [self.key(f"labels:{modality}"), self.key(f"meta:{modality}")]
        packed = self._call(self._lookup, keys=keys, args=[int(label) for label in labels])
        ids, metadata = msgpack.Unpacker(io.BytesIO(packed), raw=True)
        described = iter(metadata)
        return [(item.decode(), (next(described) or b"{}").decode()) if item else None for item in ids]

    def codes_in_order(self, modality: str) -> StoredCodes:
        """Every item's label, bucket and code, in label (insertion) order: all a serving process loads.

        Each HSCAN step runs in a script that returns its values as one string (fixed-width records,
        decoded with numpy), so no Python object is made per item; HSCAN may return an item twice, so
        records are kept once per label."""
        cursor, pages = 0, []
        while True:
            cursor, count, blob = self._call(self._scan_values, keys=[self.key(f"items:{modality}")],
                                             args=[cursor, _SCAN_COUNT])  # fmt: skip
            if count:
                width = len(blob) // count
                pages.append(np.frombuffer(blob, dtype=_record(width)))
            if int(cursor) == 0:
                break
        if not pages:
            return StoredCodes(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.uint8))
        records = np.concatenate(pages)
        labels, first = np.unique(records["label"], return_index=True)  # sorted, each label once
        records = records[first]
        return StoredCodes(labels.astype(np.int64), records["bucket"].astype(np.int64), records["code"].copy())

    def items_in_order(self, modality: str) -> StoredItems:
        """Every item of a modality in label (insertion) order, with its id and metadata JSON text: the
        re-bucket's source (writes are refused while it reads, so codes and label map agree)."""
        codes = self.codes_in_order(modality)
        described = [
            entry
            for start in range(0, len(codes.labels), _READ_CHUNK)
            for entry in self.lookup(modality, codes.labels[start : start + _READ_CHUNK].tolist())
        ]
        if None in described:
            raise StoreUnavailableError(f"{self.prefix}labels:{modality} does not name every stored item")
        return StoredItems(
            [item for item, _ in described],
            codes.labels,
            codes.buckets,
            codes.codes,
            [meta for _, meta in described],
        )

    def complete_label_map(self, modality: str) -> int:
        """Give every stored item its ``labels:`` entry when the map is incomplete (a store written before
        the map existed); returns how many entries were written. An entry is written only if the item
        still holds that label, so a write racing this leaves no stale entry."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hlen(self.key(f"items:{modality}"))
        pipe.hlen(self.key(f"labels:{modality}"))
        if len(set(self._call(pipe.execute))) == 1:
            return 0
        written, cursor = 0, 0
        keys = [self.key(f"items:{modality}"), self.key(f"labels:{modality}")]
        while True:
            cursor, page = self._call(self.client.hscan, keys[0], cursor, count=_SCAN_COUNT)
            pairs = [part for item, value in page.items() for part in (_HEADER.unpack(value[: _HEADER.size])[1], item)]
            for start in range(0, len(pairs), 2 * _LOOKUP_CHUNK):
                written += self._call(self._index_labels, keys=keys, args=pairs[start : start + 2 * _LOOKUP_CHUNK])
            if cursor == 0:
                return written

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
