"""The durable half of the index: Redis holds every item, bucket counts, the centers and a change feed.

Keys live under ``xmh:{index}:{bundle_id}:`` (two bundles' codes never mix), then under a
*generation* ``g{n}:`` (one set of centers and the items bucketed by them); ``…:active`` names the
generation readers use, and ``…:rebuilding`` is set while a re-bucket copies items into the next one:

- ``items:{modality}``   hash id → bucket (u32 BE) · label (u64 BE) · packed code
- ``entries:{modality}`` hash label (decimal) → id, a newline, the user metadata (JSON): what a search
  resolves its ranked labels with in one ``HMGET``, since a serving process keeps only codes and labels in
  memory (``docs/memory.md``); ids hold no whitespace, so the first newline ends the id
- ``counts:{modality}`` hash bucket → number of items
- ``centers``           the bucket centers (``.npy`` bytes, no pickle); ``info`` hash: version, bits
- ``next_label``        counter giving labels (a batch's by its script, an import chunk's reserved ahead)
- ``seq`` and ``feed``  the change feed: a stream with one entry per write, id ``<seq>-0``

A write (a batch of one modality or both, or a delete) is one Lua script, which Redis runs atomically:
it checks every id first (an id held by the other modality fails the whole batch, nothing written; so
does a rebuild in progress), allocates the batch's labels, writes items, entries and counts, and
appends the change to the feed. A bulk import's chunk is the same write as one ``MULTI``/``EXEC``
transaction of plain commands, checked under ``WATCH`` (:meth:`RedisStore.write_prepared`), with labels
reserved before it. Every process serving the index applies the feed in order (``index.engine``) and
keeps each bucket in label order, so they all hold the same items in the same order. A call returns only
after Redis has applied it (and, with ``appendfsync always`` as the deploy config sets, written it to
the AOF), so a returned call is an acknowledged write.

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

import hiredis
import msgpack
import numpy as np
import redis

from index.errors import FeedGapError, GenerationMovedError, ModalityConflictError, StoreUnavailableError

MODALITIES = ("image", "text")
FEED_LENGTH = 1000  # change-feed entries Redis keeps (approximately: MAXLEN ~)
ID_MAX_CHARS = 256  # an item id: 1 to 256 characters, no whitespace (it is a URL path segment of the API)
ID_PATTERN = r"^[^\s]+$"
_HEADER = struct.Struct(">IQ")  # bucket, label
_READ_CHUNK = 10_000  # labels per lookup when reading a whole modality: few round trips, no long block of Redis
_SCAN_COUNT = 10_000  # SCAN/HSCAN's per-step hint, for the same reason
_FEED_READ = 500  # feed entries per XRANGE/XREAD: half a feed, so a catch-up takes a few reads at most
_LOOKUP_CHUNK = 4000  # labels per HMGET in the lookup script: below Lua's limit on unpacked values (~8000)
_PACK_SLICE = 1000  # hash fields per encoded HSET: short holds of the interpreter lock
_WATCH_ATTEMPTS = 3  # tries of an import chunk's transaction before it is written by the script instead

# KEYS: items, entries, counts of the image modality; the same of the text modality; the rebuild flag;
#       next_label; seq; feed; the active-generation key; with a progress field, the progress hash of an import.
# ARGV: mode, feed length, progress field ('' for none), generation, then per modality group five arguments: side (0
#       image, 1 text), ids (a msgpack array), records (one string: a fixed-size record per id), metadata (a
#       msgpack array of JSON texts), record size. Compact on purpose: a batch is a handful of arguments
#       whatever its size, so neither redis-py nor Redis spends time per argument.
#   'write': record = bucket (u32 BE) · code. Labels are allocated here and put after the bucket; the batch
#            is appended to the feed as one entry; refused while a re-bucket runs, and when the generation
#            is no longer the active one (a re-bucket ended: the writer's centers and keys are stale).
#   'copy':  record = bucket · label (u64 BE) · code, kept as given; next_label is raised past them and
#            nothing is appended to the feed.
# Ids are read and written with one HMGET/HSET per slice of SLICE ids (Lua's unpack is bounded), counts
# with one HINCRBY per bucket touched. With a progress field, HSET progress field seq in the same script,
# so a chunk of an import is marked done exactly when its items are written.
# Returns {seq, first label, previous}: seq and first label 0 for 'copy'; previous a msgpack array with
# each id's former bucket · label (12 bytes), or '' when it was new.
_UPSERT = """
local write = ARGV[1] == 'write'
if write and redis.call('EXISTS', KEYS[7]) == 1 then
  return redis.error_reply('REBUILDING')
end
if write and redis.call('GET', KEYS[11]) ~= ARGV[4] then
  return redis.error_reply('GENERATION')
end
local SLICE = 1000
local groups, n = {}, 0
for g = 5, #ARGV, 5 do
  local group = {side = tonumber(ARGV[g]), ids = cmsgpack.unpack(ARGV[g + 1]), records = ARGV[g + 2],
                 meta = cmsgpack.unpack(ARGV[g + 3]), size = tonumber(ARGV[g + 4])}
  groups[#groups + 1] = group
  n = n + #group.ids
end
local function hmget(key, ids)
  local out = {}
  for s = 1, #ids, SLICE do
    local part = redis.call('HMGET', key, unpack(ids, s, math.min(s + SLICE - 1, #ids)))
    for i = 1, #part do out[s + i - 1] = part[i] end
  end
  return out
end
local function hset(key, pairs_)
  for s = 1, #pairs_, 2 * SLICE do
    redis.call('HSET', key, unpack(pairs_, s, math.min(s + 2 * SLICE - 1, #pairs_)))
  end
end
for _, group in ipairs(groups) do
  local held = hmget(KEYS[(1 - group.side) * 3 + 1], group.ids)
  for i = 1, #group.ids do
    if held[i] then return redis.error_reply('CONFLICT ' .. group.ids[i]) end
  end
end
local first, last = 0, 0
if write then
  first = redis.call('INCRBY', KEYS[8], n) - n + 1
end
local previous, changed, row = {}, {}, 0
for _, group in ipairs(groups) do
  local base, size, ids, meta = group.side * 3, group.size, group.ids, group.meta
  local old = hmget(KEYS[base + 1], ids)
  local delta, values, entries, dropped = {}, {}, {}, {}
  for i = 1, #ids do
    local value = string.sub(group.records, (i - 1) * size + 1, i * size)
    local label = first + row
    if write then
      value = string.sub(value, 1, 4) .. struct.pack('>I8', label) .. string.sub(value, 5)
    else
      label = struct.unpack('>I8', value, 5)
      last = math.max(last, label)
    end
    local bucket = struct.unpack('>I4', value)
    delta[bucket] = (delta[bucket] or 0) + 1
    local before = ''
    if old[i] then
      local was = struct.unpack('>I4', old[i])
      delta[was] = (delta[was] or 0) - 1
      before = string.sub(old[i], 1, 12)
      dropped[#dropped + 1] = string.format('%d', struct.unpack('>I8', old[i], 5))
    end
    entries[2 * i - 1], entries[2 * i] = string.format('%d', label), ids[i] .. '\\n' .. meta[i]
    row = row + 1
    previous[row] = before
    values[2 * i - 1], values[2 * i] = ids[i], value
    changed[row] = {group.side, ids[i], value, '', before}
  end
  hset(KEYS[base + 1], values)
  for s = 1, #dropped, SLICE do  -- before the new entries: a copy may write an item's own label again
    redis.call('HDEL', KEYS[base + 2], unpack(dropped, s, math.min(s + SLICE - 1, #dropped)))
  end
  hset(KEYS[base + 2], entries)
  for bucket, d in pairs(delta) do
    if d ~= 0 then redis.call('HINCRBY', KEYS[base + 3], bucket, d) end
  end
end
local seq = 0
if write then
  seq = redis.call('INCR', KEYS[9])
  redis.call('XADD', KEYS[10], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'items', cmsgpack.pack(changed))
elseif last > tonumber(redis.call('GET', KEYS[8]) or '0') then
  redis.call('SET', KEYS[8], last)
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[12], ARGV[3], seq)
end
return {seq, first, cmsgpack.pack(previous)}
"""

# KEYS: items, entries, counts of the item's modality; the rebuild flag; seq; feed.
# ARGV: id, side, feed length. Returns {seq, previous}, {0, ''} when the id is absent.
_DELETE = """
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('REBUILDING')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return {0, ''} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], string.format('%d', struct.unpack('>I8', old, 5)))
redis.call('HINCRBY', KEYS[3], struct.unpack('>I4', old), -1)
local previous = string.sub(old, 1, 12)
local seq = redis.call('INCR', KEYS[5])
local changed = {{tonumber(ARGV[2]), ARGV[1], '', '', previous}}
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'items', cmsgpack.pack(changed))
return {seq, previous}
"""

# An item's stored value and its entry (id, newline, metadata), false where absent. KEYS: items, entries.
_GET = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return {false, false} end
return {value, redis.call('HGET', KEYS[2], string.format('%d', struct.unpack('>I8', value, 5)))}
"""

# A search's ranked labels → their entries (id, newline, metadata), false where a label is gone, in one
# call whatever their number: HMGET in parts of _LOOKUP_CHUNK (Lua's unpack is limited to ~8000 values),
# msgpack'd (one string to decode, not 2k replies). KEYS: entries of one modality. ARGV: labels.
_LOOKUP = Template("""
local entries = {}
for first = 1, #ARGV, $chunk do
  local part = redis.call('HMGET', KEYS[1], unpack(ARGV, first, math.min(first + $chunk - 1, #ARGV)))
  for i = 1, #part do entries[first + i - 1] = part[i] end
end
return cmsgpack.pack(entries)
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

# Upgrading a generation written before entries existed (ids and metadata were two hashes: ``labels:``
# label → id, ``meta:`` id → metadata). KEYS: items, entries, the former meta hash. ARGV: label, id, …
# Writes an entry only where the id still holds that label; returns how many were written.
_UPGRADE_ENTRIES = """
local written = 0
for i = 1, #ARGV, 2 do
  local value = redis.call('HGET', KEYS[1], ARGV[i + 1])
  if value and string.format('%d', struct.unpack('>I8', value, 5)) == ARGV[i] then
    local meta = redis.call('HGET', KEYS[3], ARGV[i + 1]) or '{}'
    written = written + redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1] .. '\\n' .. meta)
  end
end
return written
"""


def _record(width: int) -> np.dtype:
    """A stored value as a numpy record: bucket (u32 BE) · label (u64 BE) · packed code."""
    return np.dtype([("bucket", ">u4"), ("label", ">u8"), ("code", np.uint8, (width - _HEADER.size,))])


# KEYS: items of the image modality, items of the text modality. ARGV: ids (a msgpack array).
# Returns one byte per id: 0 absent, 1 image, 2 text (the SLICE-wise HMGETs as in the upsert).
_MODALITIES = """
local ids = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #ids do out[i] = 0 end
for side = 1, 2 do
  for s = 1, #ids, 1000 do
    local part = redis.call('HMGET', KEYS[side], unpack(ids, s, math.min(s + 999, #ids)))
    for i = 1, #part do
      if part[i] then out[s + i - 1] = side end
    end
  end
end
local bytes = {}
for i = 1, #ids do bytes[i] = string.char(out[i]) end
return table.concat(bytes)
"""
_STORED_AS = (None, *MODALITIES)  # by the byte _MODALITIES answers


@dataclass(frozen=True)
class Group:
    """One modality's part of a batch to write, row-aligned."""

    modality: str
    ids: Sequence[str]
    buckets: np.ndarray
    codes: np.ndarray  # packed uint8
    metadata: Sequence[str | bytes]  # JSON text


@dataclass(frozen=True)
class PreparedChunk:
    """An import chunk ready for :meth:`RedisStore.write_prepared`: its labels reserved and its writes
    encoded as Redis commands, ahead of the call (on the importer's reading thread)."""

    group: Group
    generation: int  # the generation whose keys and centers it was prepared for
    values: bytes  # the items' stored values, fixed-size, concatenated in row order
    commands: list[bytes]  # HSETs of the items, then of the entries, encoded (RESP)
    counts: dict[int, int]  # items per bucket


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


def _split(entry: bytes) -> tuple[str, str]:
    """An ``entries:`` value → (id, metadata JSON text)."""
    item, _, meta = entry.partition(b"\n")
    return item.decode(), meta.decode()


def _chunk_changes(side: int, ids: list[bytes], values: bytes, width: int, befores: list[bytes]) -> list[ChangedItem]:
    """An import chunk's feed entry (columns: ids, the values as one string, the replaced headers or none
    when every item is new) as changes."""
    befores = befores or [b""] * len(ids)
    return [
        _changed(side, item, values[row * width : (row + 1) * width], b"", before)
        for row, (item, before) in enumerate(zip(ids, befores, strict=True))
    ]


def _decode_feed(entries: list) -> list[Change]:
    """Feed entries as returned by XRANGE/XREAD: (id ``<seq>-0``, {items: msgpack rows} or, from an
    import, {chunk: msgpack columns}) → changes."""
    changes = []
    for entry_id, fields in entries:
        if b"chunk" in fields:
            items = _chunk_changes(*msgpack.unpackb(fields[b"chunk"], raw=True))
        else:
            items = [_changed(*row) for row in msgpack.unpackb(fields[b"items"], raw=True)]
        changes.append(Change(int(entry_id.split(b"-")[0]), items))
    return changes


def records(buckets: np.ndarray, codes: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """The upsert script's fixed-size records, one row per item: bucket (u32 BE), [label (u64 BE),] code."""
    parts = [np.asarray(buckets, dtype=">u4").reshape(-1, 1).view(np.uint8)]
    if labels is not None:
        parts.append(np.asarray(labels, dtype=">u8").reshape(-1, 1).view(np.uint8))
    parts.append(np.asarray(codes, dtype=np.uint8).reshape(len(parts[0]), -1))
    return np.concatenate(parts, axis=1)


def entry(item: str, metadata: str | bytes) -> bytes:
    """An ``entries:`` value: the id, a newline, the metadata JSON text (the inverse of :func:`_split`)."""
    return b"%s\n%s" % (item.encode(), metadata.encode() if isinstance(metadata, str) else metadata)


def _lua_msgpack(values: list) -> bytes:
    """msgpack that Redis's Lua ``cmsgpack`` reads: bytes as its raw strings (it knows no *bin* type)."""
    return msgpack.packb(values, use_bin_type=False)


def _interleave(names: Sequence, values: Sequence) -> list:
    """name, value, name, value, …: a hash write's arguments."""
    pairs: list = [None] * (2 * len(names))
    pairs[0::2], pairs[1::2] = names, values
    return pairs


def _arguments(group: Group) -> tuple[int, Sequence[str], np.ndarray, Sequence[str]]:
    return MODALITIES.index(group.modality), group.ids, records(group.buckets, group.codes), group.metadata


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
        self._modalities = client.register_script(_MODALITIES)
        self._lookup = client.register_script(_LOOKUP)
        self._scan_values = client.register_script(_SCAN_VALUES)
        self._get = client.register_script(_GET)
        self._upgrade_entries = client.register_script(_UPGRADE_ENTRIES)

    def at(self, generation: int) -> RedisStore:
        """The same index and bundle, another generation."""
        return RedisStore(self.client, self.index_name, self.bundle_id, generation)

    def active_generation(self) -> int | None:
        value = self._call(self.client.get, self.base + "active")
        return None if value is None else int(value)

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
            if str(exc).startswith("GENERATION"):
                raise GenerationMovedError("the index was re-bucketed meanwhile: nothing written, retry") from exc
            raise StoreUnavailableError(f"Redis refused the operation: {exc}") from exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailableError(f"Redis is unreachable: {exc}") from exc

    def _keys(self) -> list[str]:
        """The upsert script's KEYS, without the progress hash."""
        keys = [self.key(f"{kind}:{m}") for m in MODALITIES for kind in ("items", "entries", "counts")]
        state = [self.rebuild_key, self.key("next_label"), self.key("seq"), self.key("feed"), self.base + "active"]
        return keys + state

    def progress_key(self, job: str) -> str:
        """The hash of an import's done chunks (chunk number → the feed entry that wrote it). Under the
        bundle, not the generation: a re-bucket copies a done chunk's items, so it stays done."""
        return f"{self.base}import:{job}"

    def done_chunks(self, job: str) -> set[str]:
        """The chunks of an import already written (each marked by the script that wrote it)."""
        return {chunk.decode() for chunk in self._call(self.client.hkeys, self.progress_key(job))}

    def _upsert_call(
        self, mode: str, groups: Sequence[tuple[int, Sequence[str], np.ndarray, Sequence[str]]], **options
    ) -> tuple[int, int, list[bytes]]:
        """Run the upsert script on (side, ids, records, metadata) groups; ``feed_length`` and ``progress``
        (job, chunk) are optional. Returns (seq, first label, previous values)."""
        progress = options.get("progress")
        keys = self._keys() + ([self.progress_key(progress[0])] if progress else [])
        args: list = [mode, options.get("feed_length") or FEED_LENGTH, "" if progress is None else progress[1]]
        args.append(self.generation)
        for side, ids, records, metadata in groups:
            if len(ids):
                args += [side, msgpack.packb(list(ids)), records.tobytes(), _lua_msgpack(list(metadata))]
                args.append(records.shape[1])
        seq, first, previous = self._call(self._upsert, keys=keys, args=args)
        return seq, first, msgpack.unpackb(previous, raw=True)

    def write(self, groups: Sequence[Group]) -> Change:
        """Write a batch of one or both modalities in one atomic script, all of it or nothing, and append
        it to the change feed as one entry; returns the change as every follower of the feed will apply
        it. Labels are allocated by the script, so label order is feed order. Refused while a re-bucket
        runs, and with :class:`GenerationMovedError` once this generation is no longer the active one."""
        seq, first, previous = self._upsert_call("write", [_arguments(group) for group in groups])
        items = []
        for group in groups:
            now = zip(group.ids, group.buckets.tolist(), group.codes, group.metadata, strict=True)
            for item, bucket, code, _ in now:
                row = len(items)
                items.append(ChangedItem(group.modality, item, (bucket, first + row, code.tobytes()),
                                         _header(previous[row])))  # fmt: skip
        return Change(seq, items)

    def write_chunk(self, group: Group, job: str, chunk: str, feed_length: int) -> int:
        """:meth:`write` for a chunk of an import: the same script, which also marks ``chunk`` done in
        ``job``'s progress hash; the feed keeps about ``feed_length`` entries (chunks, not batches).
        Returns the chunk's feed entry number; no :class:`Change` is built (nobody here applies it)."""
        return self._upsert_call("write", [_arguments(group)], progress=(job, chunk), feed_length=feed_length)[0]

    def prepare(self, group: Group) -> PreparedChunk:
        """Reserve a chunk's labels (one ``INCRBY``: labels a crash leaves unused are never given again)
        and encode its writes. Labels then increase in the order chunks are prepared, which a concurrent
        batch may interleave with; a serving process keeps each bucket in label order either way."""
        n = len(group.ids)
        first = int(self._call(self.client.incrby, self.key("next_label"), n)) - n + 1
        stored = records(group.buckets, group.codes, np.arange(first, first + n))
        width, blob = stored.shape[1], stored.tobytes()
        values = [blob[start : start + width] for start in range(0, n * width, width)]  # one per hash field
        entries = [entry(item, meta) for item, meta in zip(group.ids, group.metadata, strict=True)]
        items, names = _interleave(group.ids, values), _interleave(range(first, first + n), entries)
        step = 2 * _PACK_SLICE
        commands = [
            hiredis.pack_command(("HSET", self.key(f"{kind}:{group.modality}"), *pairs[start : start + step]))
            for kind, pairs in (("items", items), ("entries", names))
            for start in range(0, len(pairs), step)
        ]
        buckets, counts = np.unique(group.buckets, return_counts=True)
        counted = dict(zip(buckets.tolist(), counts.tolist(), strict=True))
        return PreparedChunk(group, self.generation, blob, commands, counted)

    def write_prepared(self, prepared: PreparedChunk, job: str, chunk: str, feed_length: int) -> int:
        """:meth:`write_chunk` at the speed of plain commands: one ``MULTI``/``EXEC`` transaction writes
        the chunk's items, entries, counts, feed entry and progress mark, all or nothing (Redis applies a
        transaction at once and, from its AOF, restores none of one cut short), after the script's checks
        (re-bucket, generation, ids of the other modality, replaced items) made under ``WATCH``. A write
        by anyone else in between aborts it; after :data:`_WATCH_ATTEMPTS` aborts the chunk is written by
        the script. A chunk prepared for another generation is refused (:class:`GenerationMovedError`), as
        one prepared for this generation once it is no longer the active one. Returns the chunk's feed
        entry number."""
        if prepared.generation != self.generation:
            raise GenerationMovedError(f"chunk prepared for generation {prepared.generation}, not {self.generation}")
        for _ in range(_WATCH_ATTEMPTS):
            seq = self._call(self._transaction, prepared, job, chunk, feed_length)
            if seq is not None:
                return seq
        return self.write_chunk(prepared.group, job, chunk, feed_length)

    def _transaction(self, prepared: PreparedChunk, job: str, chunk: str, feed_length: int) -> int | None:
        """One try of :meth:`write_prepared` on a connection of its own (a watch is per connection);
        None when a watched key changed. The connection is dropped on any failure, watch and all."""
        group, side = prepared.group, MODALITIES.index(prepared.group.modality)
        entries_key, counts_key = self.key(f"entries:{group.modality}"), self.key(f"counts:{group.modality}")
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            seq, held = self._watch(conn, group.ids)
            conflict = next((i for i, value in enumerate(held[1 - side]) if value is not None), None)
            if conflict is not None:
                raise redis.ResponseError(f"CONFLICT {group.ids[conflict]}")
            counts, befores, dropped = dict(prepared.counts), [], []
            if any(value is not None for value in held[side]):  # replaced items: counts, entries, feed
                befores = [old[: _HEADER.size] if old is not None else b"" for old in held[side]]
                for old in filter(None, held[side]):
                    bucket, label = _HEADER.unpack(old[: _HEADER.size])
                    counts[bucket] = counts.get(bucket, 0) - 1
                    dropped.append(label)
            width = len(prepared.values) // len(group.ids)
            feed = msgpack.packb((side, group.ids, prepared.values, width, befores))
            seq += 1
            commands = [hiredis.pack_command(("MULTI",))]
            if dropped:  # before the new entries, as in the script
                commands.append(hiredis.pack_command(("HDEL", entries_key, *dropped)))
            commands += prepared.commands
            commands += [hiredis.pack_command(("HINCRBY", counts_key, b, d)) for b, d in counts.items() if d]
            commands += [
                hiredis.pack_command(("SET", self.key("seq"), seq)),
                hiredis.pack_command(("XADD", self.key("feed"), "MAXLEN", "~", feed_length, f"{seq}-0", "chunk", feed)),
                hiredis.pack_command(("HSET", self.progress_key(job), chunk, seq)),
                hiredis.pack_command(("EXEC",)),
            ]
            conn.send_packed_command(commands)
            replies = [conn.read_response() for _ in commands]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        if replies[-1] is None:
            return None
        failed = [reply for reply in replies[-1] if isinstance(reply, redis.ResponseError)]
        if failed:
            raise failed[0]
        return seq

    def _watch(self, conn: redis.connection.Connection, ids: Sequence[str]) -> tuple[int, list[list]]:
        """``WATCH`` what a chunk's write depends on, then read it in one round trip: the feed position and
        each id's stored value under each modality (None where absent). Refused as the script refuses."""
        state = [self.rebuild_key, self.base + "active", self.key("seq")]
        items = [self.key(f"items:{modality}") for modality in MODALITIES]
        commands = [("WATCH", *state, *items), ("MGET", *state)] + [("HMGET", key, *ids) for key in items]
        conn.send_packed_command([hiredis.pack_command(command) for command in commands])
        _, (rebuilding, active, seq), *held = [conn.read_response() for _ in commands]
        if rebuilding is not None:
            raise redis.ResponseError("REBUILDING")
        if active is None or int(active) != self.generation:
            raise redis.ResponseError("GENERATION")
        return int(seq or 0), held

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
        group = (MODALITIES.index(modality), ids, records(buckets, codes, labels), metadata)
        self._upsert_call("copy", [group])

    def delete(self, modality: str, item: str) -> Change | None:
        """Delete an item and append that to the feed; None when it was absent."""
        keys = [self.key(f"{kind}:{modality}") for kind in ("items", "entries", "counts")]
        keys += [self.rebuild_key, self.key("seq"), self.key("feed")]
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
        """The modality each id is stored under (None when absent), in one round trip: a script answers
        one byte per id (a batch's thousand ids are one string to parse, not two thousand replies)."""
        if not items:
            return {}
        keys = [self.key(f"items:{modality}") for modality in MODALITIES]
        found = self._call(self._modalities, keys=keys, args=[msgpack.packb(list(items))])
        return {item: _STORED_AS[side] for item, side in zip(items, found, strict=True)}

    def modality_of(self, item: str) -> str | None:
        return self.modalities_of([item])[item]

    def get(self, modality: str, item: str) -> StoredItem | None:
        keys = [self.key(f"items:{modality}"), self.key(f"entries:{modality}")]
        value, entry = self._call(self._get, keys=keys, args=[item])
        if not value:
            return None
        bucket, label = _HEADER.unpack(value[: _HEADER.size])
        return StoredItem(item, modality, bucket, label, value[_HEADER.size :], json.loads(_split(entry)[1]))

    def lookup(self, modality: str, labels: Sequence[int]) -> list[tuple[str, str] | None]:
        """(id, metadata JSON text) of each label, None for a label no longer stored (replaced or deleted
        since it was ranked): what a search resolves its ranked labels with, in one round trip."""
        if not len(labels):
            return []
        packed = self._call(self._lookup, keys=[self.key(f"entries:{modality}")], args=[int(label) for label in labels])
        return [_split(entry) if entry else None for entry in msgpack.unpackb(packed, raw=True)]

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
        re-bucket's source (writes are refused while it reads, so codes and entries agree). A generation
        of the former layout is upgraded first."""
        self.upgrade_entries(modality)
        codes = self.codes_in_order(modality)
        described = [
            entry
            for start in range(0, len(codes.labels), _READ_CHUNK)
            for entry in self.lookup(modality, codes.labels[start : start + _READ_CHUNK].tolist())
        ]
        if None in described:
            raise StoreUnavailableError(f"{self.prefix}entries:{modality} does not name every stored item")
        return StoredItems(
            [item for item, _ in described],
            codes.labels,
            codes.buckets,
            codes.codes,
            [meta for _, meta in described],
        )

    def upgrade_entries(self, modality: str) -> int:
        """Give every stored item its ``entries:`` entry when a generation was written before entries
        existed (by the layout of ids and metadata in two hashes, or before any label map), then drop the
        former hashes; returns how many entries were written. An entry is written only if the item still
        holds that label, so a write racing this leaves no stale entry."""
        keys = [self.key(f"items:{modality}"), self.key(f"entries:{modality}"), self.key(f"meta:{modality}")]
        former = [keys[2], self.key(f"labels:{modality}")]
        pipe = self.client.pipeline(transaction=True)
        pipe.hlen(keys[0])
        pipe.hlen(keys[1])
        pipe.exists(*former)
        items, entries, old_layout = self._call(pipe.execute)
        if items == entries and not old_layout:
            return 0
        written, cursor = 0, 0
        while True:
            cursor, page = self._call(self.client.hscan, keys[0], cursor, count=_SCAN_COUNT)
            pairs = [part for item, value in page.items() for part in (_HEADER.unpack(value[: _HEADER.size])[1], item)]
            for start in range(0, len(pairs), 2 * _LOOKUP_CHUNK):
                written += self._call(self._upgrade_entries, keys=keys, args=pairs[start : start + 2 * _LOOKUP_CHUNK])
            if cursor == 0:
                break
        self._call(self.client.unlink, *former)
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
