"""One shard of the index in Redis: its items, bucket counts and change feed (the whole index when S = 1).

``index.store`` splits an index over its shards and gives every caller this module's surface for all of
them; labels here are always the ones serving processes hold (``index.shards``: ``local · S + shard``),
turned into the shard's own where Redis stores them.

Keys (``index.redis_keys``) live under one bundle (two bundles' codes never mix), then under a
*generation* (one set of centers and the items bucketed by them); the bundle's ``active`` key names the
generation readers use, and ``rebuilding`` is set while a re-bucket copies items into the next one. A
generation holds:

- ``items:{modality}``   hash id → stored value (bucket · label · packed code, ``index.stored_values``)
- ``entries:{modality}`` hash label (decimal) → entry (id, a newline, the user metadata): what a search
  resolves its ranked labels with in one ``HMGET``, since a serving process keeps only codes and labels in
  memory (``docs/memory.md``)
- ``counts:{modality}`` hash bucket → number of items
- ``centers``           the bucket centers (``.npy`` bytes, no pickle); ``info`` hash: centers_version, k
- ``next_label``        counter giving labels (a batch's by its script, an import chunk's reserved ahead)
- ``seq`` and ``feed``  the change feed (``index.change_feed``): a stream with one entry per write

A write (a batch of one modality or both, or a delete) is one Lua script, which Redis runs atomically:
it checks every id first (an id held by the other modality fails the whole batch, nothing written; so
does a rebuild in progress), allocates the batch's labels, writes items, entries and counts, and
appends the change to the feed. A bulk import's chunk is the same write as one ``MULTI``/``EXEC``
transaction (``index.import_transaction``), checked by the same Lua rules (:data:`WRITE_RULES`). Every
process serving the index applies the feed in order (``index.engine``) and keeps each bucket in label
order, so they all hold the same items in the same order. A call returns only after Redis has applied it
(and, with ``appendfsync always`` as the deploy config sets, written it to the AOF) and, with replicas
(``index.redis_connection``), after the replicas its client asks for confirm it (``WAIT``, on the master
holding the shard), so a returned call is an acknowledged write.

The feed keeps about :data:`FEED_LENGTH` entries; a process that falls further behind reloads the
generation from the hashes, which always hold everything.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from string import Template

import msgpack
import numpy as np
import redis

from index.change_feed import Change, ChangedItem, ChangeFeed
from index.errors import StoreUnavailableError
from index.layout_upgrade import upgrade_entries
from index.redis_calls import LuaScript, call
from index.redis_keys import BundleKeys, IndexKeys
from index.shards import global_labels, local_labels
from index.stored_values import HEADER, MODALITIES, header, record_dtype, records, split_entry

FEED_LENGTH = 1000  # change-feed entries Redis keeps (approximately: MAXLEN ~)
SLICE = 1000  # ids per HMGET/HSET/HDEL of a script (Lua's unpack is bounded), per encoded HSET of an import
_READ_CHUNK = 10_000  # labels per lookup when reading a whole modality: few round trips, no long block of Redis
_SCAN_COUNT = 10_000  # SCAN/HSCAN's per-step hint, for the same reason
_LOOKUP_CHUNK = 4000  # labels per HMGET in the lookup script: below Lua's limit on unpacked values (~8000)

# The rules of a write, each stated once, in Lua, for every script that writes or checks a write (the
# upsert, the delete, the import transaction's check): ``refused`` the state of the index (a re-bucket
# runs; the writer's generation, when given, is no longer the active one), ``held_elsewhere`` an id held
# by the other modality; each returns the error reply naming the rule (``index.redis_calls``), or nil.
# ``hmget``/``hset`` work in parts of SLICE ids.
WRITE_RULES = Template("""
local SLICE = $slice
local function refused(rebuilding, active, generation)
  if redis.call('EXISTS', rebuilding) == 1 then return redis.error_reply('REBUILDING') end
  if generation and redis.call('GET', active) ~= generation then return redis.error_reply('GENERATION') end
end
local function hmget(key, ids)
  local out = {}
  for s = 1, #ids, SLICE do
    local part = redis.call('HMGET', key, unpack(ids, s, math.min(s + SLICE - 1, #ids)))
    for i = 1, #part do out[s + i - 1] = part[i] end
  end
  return out
end
local function held_elsewhere(other_items, ids)
  local held = hmget(other_items, ids)
  for i = 1, #ids do
    if held[i] then return redis.error_reply('CONFLICT ' .. ids[i]) end
  end
end
""").substitute(slice=SLICE)

# KEYS: items, entries, counts of the image modality; the same of the text modality; the rebuild flag;
#       next_label; seq; feed; the active-generation key; with a progress field, the progress hash of an import;
#       for 'fill', the items hashes (image, text) of the index re-encoded instead.
# ARGV: mode, feed length, progress field ('' for none), generation, then per modality group five arguments: side (0
#       image, 1 text), ids (a msgpack array), records (one string: a fixed-size record per id), metadata (a
#       msgpack array of JSON texts), record size. Compact on purpose: a batch is a handful of arguments
#       whatever its size, so neither redis-py nor Redis spends time per argument.
#   'write': record = bucket (u32 BE) · code. Labels are allocated here and put after the bucket; the batch
#            is appended to the feed as one entry; refused while a re-bucket runs, and when the generation
#            is no longer the active one (a re-bucket ended: the writer's centers and keys are stale).
#   'fill':  'write' for the rows whose id the source index holds and this one does not (either modality):
#            re-encoding an index under a new bundle, which neither revives an item deleted meanwhile nor
#            overwrites one written meanwhile by the service (that write is newer). Nothing kept: {0, 0, ''}.
#   'copy':  record = bucket · label (u64 BE) · code, kept as given; next_label is raised past them and
#            nothing is appended to the feed.
# Counts are written with one HINCRBY per bucket touched. With a progress field, HSET progress field seq in
# the same script, so a chunk of an import is marked done exactly when its items are written.
# Returns {seq, first label, previous}: seq and first label 0 for 'copy'; previous a msgpack array with
# each id's former bucket · label (12 bytes), or '' when it was new.
_UPSERT = (
    WRITE_RULES
    + """
local fill = ARGV[1] == 'fill'
local write = ARGV[1] == 'write' or fill
if write then
  local refusal = refused(KEYS[7], KEYS[11], ARGV[4])
  if refusal then return refusal end
end
-- 'fill' keeps the rows whose id is in the source index (KEYS[12 + side]) and in neither items hash here
local function kept(group)
  local here = hmget(KEYS[group.side * 3 + 1], group.ids)
  local elsewhere = hmget(KEYS[(1 - group.side) * 3 + 1], group.ids)
  local live = hmget(KEYS[12 + group.side], group.ids)
  local ids, records, meta = {}, {}, {}
  for i = 1, #group.ids do
    if live[i] and not here[i] and not elsewhere[i] then
      ids[#ids + 1], meta[#meta + 1] = group.ids[i], group.meta[i]
      records[#records + 1] = string.sub(group.records, (i - 1) * group.size + 1, i * group.size)
    end
  end
  return {side = group.side, ids = ids, records = table.concat(records), meta = meta, size = group.size}
end
local groups, n = {}, 0
for g = 5, #ARGV, 5 do
  local group = {side = tonumber(ARGV[g]), ids = cmsgpack.unpack(ARGV[g + 1]), records = ARGV[g + 2],
                 meta = cmsgpack.unpack(ARGV[g + 3]), size = tonumber(ARGV[g + 4])}
  if fill then group = kept(group) end
  groups[#groups + 1] = group
  n = n + #group.ids
end
if fill and n == 0 then return {0, 0, cmsgpack.pack({})} end
local function hset(key, pairs_)
  for s = 1, #pairs_, 2 * SLICE do
    redis.call('HSET', key, unpack(pairs_, s, math.min(s + 2 * SLICE - 1, #pairs_)))
  end
end
for _, group in ipairs(groups) do
  local refusal = held_elsewhere(KEYS[(1 - group.side) * 3 + 1], group.ids)
  if refusal then return refusal end
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
)

# KEYS: items, entries, counts of the item's modality; the rebuild flag; seq; feed.
# ARGV: id, side, feed length. Returns {seq, previous}, {0, ''} when the id is absent.
_DELETE = (
    WRITE_RULES
    + """
local refusal = refused(KEYS[4])
if refusal then return refusal end
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
)

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

# KEYS: items of the image modality, items of the text modality. ARGV: ids (a msgpack array).
# Returns one byte per id: 0 absent, 1 image, 2 text.
_MODALITIES = (
    WRITE_RULES
    + """
local ids = cmsgpack.unpack(ARGV[1])
local out = {}
for i = 1, #ids do out[i] = 0 end
for side = 1, 2 do
  local held = hmget(KEYS[side], ids)
  for i = 1, #ids do
    if held[i] then out[i] = side end
  end
end
local bytes = {}
for i = 1, #ids do bytes[i] = string.char(out[i]) end
return table.concat(bytes)
"""
)
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


def _lua_msgpack(values: list) -> bytes:
    """msgpack that Redis's Lua ``cmsgpack`` reads: bytes as its raw strings (it knows no *bin* type)."""
    return msgpack.packb(values, use_bin_type=False)


def _arguments(group: Group) -> tuple[int, Sequence[str], np.ndarray, Sequence[str | bytes]]:
    return MODALITIES.index(group.modality), group.ids, records(group.buckets, group.codes), group.metadata


class ShardStore:
    """Items, counts and the change feed of one shard of an index under one bundle (its centers too, for
    shard 0). Its scripts are class attributes, registered once whatever the number of stores. A write
    returns only once the replicas the client asks for have it (``LuaScript.write``), so a failover loses
    no acknowledged write."""

    _upsert = LuaScript(_UPSERT)
    _delete = LuaScript(_DELETE)
    _modalities = LuaScript(_MODALITIES)
    _lookup = LuaScript(_LOOKUP)
    _scan_values = LuaScript(_SCAN_VALUES)
    _get = LuaScript(_GET)

    def __init__(
        self,
        client: redis.Redis,
        index_name: str,
        bundle_id: str,
        generation: int = 0,
        shard: tuple[int, int, bool] = (0, 1, False),
    ) -> None:
        """``shard``: (this shard, S, whether keys are hash-tagged)."""
        self.client = client
        self.index_name, self.bundle_id, self.generation = index_name, bundle_id, generation
        self.shard, self.shards, self.tagged = shard
        self.bundle_keys: BundleKeys = IndexKeys(index_name).bundle(bundle_id, self.shard, self.shards, self.tagged)
        self.keys = self.bundle_keys.generation(generation)
        self.feed = ChangeFeed(client, self.keys, self.shard, self.shards)

    def at(self, generation: int) -> ShardStore:
        """The same shard, another generation."""
        shard = (self.shard, self.shards, self.tagged)
        return ShardStore(self.client, self.index_name, self.bundle_id, generation, shard)

    def active_generation(self) -> int | None:
        value = call(self.client.get, self.bundle_keys.active)
        return None if value is None else int(value)

    def activate(self) -> None:
        """Make this generation the one this shard's writes check against (and, on shard 0, readers use)."""
        call(self.client.set, self.bundle_keys.active, self.generation)

    def drop(self) -> None:
        """Delete every key of this generation."""
        self._unlink(self.keys.prefix + "*")

    def drop_bundle(self) -> None:
        """Delete every key of this shard under this bundle, every generation (a rollout's kept index)."""
        self._unlink(self.bundle_keys.base + "*")

    def _unlink(self, pattern: str) -> None:
        """UNLINK (memory freed in the background) the keys matching ``pattern``, _SCAN_COUNT a call."""
        keys = list(self.client.scan_iter(match=pattern, count=_SCAN_COUNT))
        for start in range(0, len(keys), _SCAN_COUNT):
            call(self.client.unlink, *keys[start : start + _SCAN_COUNT])

    def _global(self, local: int) -> int:
        return int(global_labels(local, self.shard, self.shards))

    def _header(self, value: bytes) -> tuple[int, int] | None:
        """A stored value's (bucket, label), with the label serving processes hold."""
        found = header(value)
        return None if found is None else (found[0], self._global(found[1]))

    def _upsert_keys(self) -> list[str]:
        """The upsert script's KEYS, without the progress hash."""
        keys = self.keys
        items = [name for m in MODALITIES for name in (keys.items[m], keys.entries[m], keys.counts[m])]
        state = [self.bundle_keys.rebuilding, keys.next_label, keys.seq, keys.feed, self.bundle_keys.active]
        return items + state

    def _upsert_call(
        self, mode: str, groups: Sequence[tuple[int, Sequence[str], np.ndarray, Sequence]], **options
    ) -> tuple[int, int, list[bytes]]:
        """Run the upsert script on (side, ids, records, metadata) groups; ``feed_length`` and ``progress``
        (job, chunk) are optional. Returns (seq, first label of this shard, previous values)."""
        progress, source = options.get("progress"), options.get("source")
        keys = self._upsert_keys() + ([self.bundle_keys.import_progress(progress[0])] if progress else [])
        keys += [source.keys.items[modality] for modality in MODALITIES] if source is not None else []
        args: list = [mode, options.get("feed_length") or FEED_LENGTH, "" if progress is None else progress[1]]
        args.append(self.generation)
        for side, ids, stored, metadata in groups:
            if len(ids):
                args += [side, msgpack.packb(list(ids)), stored.tobytes(), _lua_msgpack(list(metadata))]
                args.append(stored.shape[1])
        seq, first, previous = self._upsert.write(self.client, keys, args)
        return seq, first, msgpack.unpackb(previous, raw=True)

    def write(self, groups: Sequence[Group]) -> Change:
        """Write this shard's part of a batch (one or both modalities) in one atomic script, all of it or
        nothing, and append it to the shard's change feed as one entry; returns the change as every
        follower of the feed will apply it. Labels are allocated by the script, so label order is feed
        order. Refused while a re-bucket runs, and with :class:`GenerationMovedError` once this
        generation is no longer the active one."""
        seq, first, previous = self._upsert_call("write", [_arguments(group) for group in groups])
        items = []
        for group in groups:
            now = zip(group.ids, group.buckets.tolist(), group.codes, group.metadata, strict=True)
            for item, bucket, code, _ in now:
                row = len(items)
                items.append(ChangedItem(group.modality, item, (bucket, self._global(first + row), code.tobytes()),
                                         self._header(previous[row])))  # fmt: skip
        return Change(seq, items, self.shard)

    def write_chunk(self, group: Group, job: str, chunk: str, feed_length: int) -> int:
        """:meth:`write` for a chunk of an import: the same script, which also marks ``chunk`` done in
        ``job``'s progress hash; the feed keeps about ``feed_length`` entries (chunks, not batches).
        Returns the chunk's feed entry number; no :class:`Change` is built (nobody here applies it)."""
        return self._upsert_call("write", [_arguments(group)], progress=(job, chunk), feed_length=feed_length)[0]

    def fill(self, groups: Sequence[Group], source: ShardStore) -> int:
        """:meth:`write` of the rows whose id ``source`` (the same shard of the index re-encoded, another
        bundle's: the same hash tag) holds and this index does not, checked and written in one script;
        returns how many were written."""
        previous = self._upsert_call("fill", [_arguments(group) for group in groups], source=source)[2]
        return len(previous)

    def copy(self, modality: str, ids: Sequence[str], buckets: np.ndarray, labels: np.ndarray,
             codes: np.ndarray, metadata: Sequence[str]) -> None:  # fmt: skip
        """Write items with the labels given and no feed entry, atomically: for a generation no process
        follows yet (a re-bucket's next generation) and for preloading a benchmark's database."""
        own = local_labels(np.asarray(labels, dtype=np.int64), self.shards)
        self._upsert_call("copy", [(MODALITIES.index(modality), ids, records(buckets, codes, own), metadata)])

    def delete(self, modality: str, item: str) -> Change | None:
        """Delete an item and append that to the feed; None when it was absent."""
        keys = [self.keys.items[modality], self.keys.entries[modality], self.keys.counts[modality]]
        keys += [self.bundle_keys.rebuilding, self.keys.seq, self.keys.feed]
        seq, previous = self._delete.write(self.client, keys, [item, MODALITIES.index(modality), FEED_LENGTH])
        if not seq:
            return None
        return Change(seq, [ChangedItem(modality, item, None, self._header(previous))], self.shard)

    def modalities_of(self, items: Sequence[str]) -> dict[str, str | None]:
        """The modality each id is stored under (None when absent), in one round trip: a script answers
        one byte per id (a batch's thousand ids are one string to parse, not two thousand replies)."""
        if not items:
            return {}
        keys = [self.keys.items[modality] for modality in MODALITIES]
        found = self._modalities(self.client, keys, [msgpack.packb(list(items))])
        return {item: _STORED_AS[side] for item, side in zip(items, found, strict=True)}

    def get(self, modality: str, item: str) -> StoredItem | None:
        value, entry = self._get(self.client, [self.keys.items[modality], self.keys.entries[modality]], [item])
        if not value:
            return None
        bucket, label = HEADER.unpack(value[: HEADER.size])
        return StoredItem(item, modality, bucket, self._global(label), value[HEADER.size :],
                          json.loads(split_entry(entry)[1]))  # fmt: skip

    def lookup(self, modality: str, labels: Sequence[int]) -> list[tuple[str, str] | None]:
        """(id, metadata JSON text) of each label of this shard, None for a label no longer stored."""
        if not len(labels):
            return []
        own = [int(label) // self.shards for label in labels]
        packed = self._lookup(self.client, [self.keys.entries[modality]], own)
        return [split_entry(entry) if entry else None for entry in msgpack.unpackb(packed, raw=True)]

    def codes_in_order(self, modality: str) -> StoredCodes:
        """Every item's label, bucket and code, in label order: all a serving process loads.

        Each HSCAN step runs in a script that returns its values as one string (fixed-width records,
        decoded with numpy), so no Python object is made per item; HSCAN may return an item twice, so
        records are kept once per label."""
        cursor, pages = 0, []
        while True:
            cursor, count, blob = self._scan_values(self.client, [self.keys.items[modality]], [cursor, _SCAN_COUNT])
            if count:
                width = len(blob) // count
                pages.append(np.frombuffer(blob, dtype=record_dtype(width)))
            if int(cursor) == 0:
                break
        if not pages:
            return StoredCodes(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.uint8))
        stored = np.concatenate(pages)
        labels, first = np.unique(stored["label"], return_index=True)  # sorted, each label once
        stored = stored[first]
        labels = global_labels(labels.astype(np.int64), self.shard, self.shards)
        return StoredCodes(labels, stored["bucket"].astype(np.int64), stored["code"].copy())

    def items_in_order(self, modality: str) -> StoredItems:
        """Every item of this shard and modality in label order, with its id and metadata JSON text: the
        re-bucket's source (writes are refused while it reads, so codes and entries agree). A generation
        of the former layout is upgraded first."""
        upgrade_entries(self.client, self.keys, modality)
        codes = self.codes_in_order(modality)
        described = [
            entry
            for start in range(0, len(codes.labels), _READ_CHUNK)
            for entry in self.lookup(modality, codes.labels[start : start + _READ_CHUNK].tolist())
        ]
        if None in described:
            raise StoreUnavailableError(f"{self.keys.entries[modality]} does not name every stored item")
        return StoredItems(
            [item for item, _ in described],
            codes.labels,
            codes.buckets,
            codes.codes,
            [meta for _, meta in described],
        )

    def counts(self, modality: str) -> dict[int, int]:
        raw = call(self.client.hgetall, self.keys.counts[modality])
        return {int(b): int(c) for b, c in raw.items()}

    def save_centers(self, centers: np.ndarray, version: str) -> None:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(centers, dtype=np.int8), allow_pickle=False)
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.centers, buffer.getvalue())
        pipe.hset(self.keys.info, mapping={"centers_version": version, "k": len(centers)})
        call(pipe.execute)

    def load_centers(self) -> tuple[np.ndarray, str] | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.centers)
        pipe.hget(self.keys.info, "centers_version")
        raw, version = call(pipe.execute)
        if raw is None:
            return None
        return np.load(io.BytesIO(raw), allow_pickle=False), version.decode()
