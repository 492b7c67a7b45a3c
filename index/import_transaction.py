"""A bulk import's chunk written as one ``MULTI``/``EXEC`` transaction of plain commands: the upsert
script's write (items, entries, counts, a feed entry, the chunk's progress mark) at the speed of commands
encoded ahead, on the importer's reading thread, while Redis writes the chunk before.

The transaction is checked as the script checks a batch, by the same Lua rules (``index.store``'s
``WRITE_RULES``, run by :data:`_CHECK` under ``WATCH``): no re-bucket running, the chunk's generation still
the active one, no id held by the other modality. A write by anyone else between the check and ``EXEC``
aborts it; after :data:`_WATCH_ATTEMPTS` aborts the chunk is written by the script instead.

One transaction writes one shard's part of a chunk (``index.store``), on the node holding the shard; on
a cluster, a slot moving or a node failing over meanwhile sends the part to the script as well, which
redis-py routes (labels reserved on a node that failed may be lost with it, so the script, which
allocates its own, writes it). With replicas (the client's acknowledgement, ``index.redis_calls``), ``WAIT``
follows ``EXEC`` on the same connection, so it waits for the replicas of the master holding the shard.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import hiredis
import msgpack
import numpy as np
import redis

from index.errors import GenerationMovedError, StoreUnavailableError
from index.redis_calls import acknowledgement, call, confirm
from index.redis_connection import ROUTING_ERRORS, is_cluster, node_client
from index.shard_store import SLICE, WRITE_RULES, Group, ShardStore
from index.store import RedisStore
from index.stored_values import HEADER, MODALITIES, entry, records

_WATCH_ATTEMPTS = 3  # tries of a chunk's transaction before it is written by the script instead

# KEYS: the rebuild flag, the active-generation key, seq, items of the image modality, of the text modality.
# ARGV: generation, side, ids (a msgpack array). Refused as the upsert script refuses; else returns {seq,
# the ids' stored values under their own modality (a msgpack array, '' where absent)}.
_CHECK = (
    WRITE_RULES
    + """
local refusal = refused(KEYS[1], KEYS[2], ARGV[1])
if refusal then return refusal end
local side, ids = tonumber(ARGV[2]), cmsgpack.unpack(ARGV[3])
refusal = held_elsewhere(KEYS[5 - side], ids)
if refusal then return refusal end
local held = hmget(KEYS[4 + side], ids)
for i = 1, #ids do held[i] = held[i] or '' end
return {tonumber(redis.call('GET', KEYS[3]) or '0'), cmsgpack.pack(held)}
"""
)


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk ready for :func:`write_prepared`: its labels reserved and its writes encoded as Redis
    commands, ahead of the call."""

    group: Group
    generation: int  # the generation whose keys and centers it was prepared for
    values: bytes  # the items' stored values, fixed-size, concatenated in row order
    commands: list[bytes]  # HSETs of the items, then of the entries, encoded (RESP)
    counts: dict[int, int]  # items per bucket


def done_chunks(store: RedisStore, job: str) -> set[str]:
    """The chunks of an import already written (each shard's part marked by the write that wrote it):
    those every shard marked."""
    marked = [
        {chunk.decode() for chunk in call(store.client.hkeys, part.bundle_keys.import_progress(job))}
        for part in store.parts
    ]
    return set.intersection(*marked)


def _interleave(names: Sequence, values: Sequence) -> list:
    """name, value, name, value, …: a hash write's arguments."""
    pairs: list = [None] * (2 * len(names))
    pairs[0::2], pairs[1::2] = names, values
    return pairs


def prepare(store: ShardStore, group: Group) -> PreparedChunk:
    """Reserve a chunk's labels (one ``INCRBY``: labels a crash leaves unused are never given again)
    and encode its writes. Labels then increase in the order chunks are prepared, which a concurrent
    batch may interleave with; a serving process keeps each bucket in label order either way."""
    n = len(group.ids)
    first = int(call(store.client.incrby, store.keys.next_label, n)) - n + 1
    stored = records(group.buckets, group.codes, np.arange(first, first + n))
    width, blob = stored.shape[1], stored.tobytes()
    values = [blob[start : start + width] for start in range(0, n * width, width)]  # one per hash field
    entries = [entry(item, meta) for item, meta in zip(group.ids, group.metadata, strict=True)]
    items, names = _interleave(group.ids, values), _interleave(range(first, first + n), entries)
    step = 2 * SLICE
    commands = [
        hiredis.pack_command(("HSET", key, *pairs[start : start + step]))
        for key, pairs in ((store.keys.items[group.modality], items), (store.keys.entries[group.modality], names))
        for start in range(0, len(pairs), step)
    ]
    buckets, counts = np.unique(group.buckets, return_counts=True)
    counted = dict(zip(buckets.tolist(), counts.tolist(), strict=True))
    return PreparedChunk(group, store.generation, blob, commands, counted)


def write_prepared(store: ShardStore, prepared: PreparedChunk, job: str, chunk: str, feed_length: int) -> int:
    """``store.write_chunk`` at the speed of plain commands: one transaction writes the chunk's items,
    entries, counts, feed entry and progress mark, all or nothing (Redis applies a transaction at once
    and, from its AOF, restores none of one cut short), after the checks made under ``WATCH``. A chunk
    prepared for another generation is refused (:class:`GenerationMovedError`), as one prepared for this
    generation once it is no longer the active one. Returns the chunk's feed entry number."""
    if prepared.generation != store.generation:
        raise GenerationMovedError(f"chunk prepared for generation {prepared.generation}, not {store.generation}")
    for _ in range(_WATCH_ATTEMPTS):
        try:
            seq = call(_transaction, store, prepared, job, chunk, feed_length)
        except StoreUnavailableError as exc:
            if not (is_cluster(store.client) and isinstance(exc.__cause__, ROUTING_ERRORS)):
                raise
            break
        if seq is not None:
            return seq
    return store.write_chunk(prepared.group, job, chunk, feed_length)


def _transaction(store: ShardStore, prepared: PreparedChunk, job: str, chunk: str, feed_length: int) -> int | None:
    """One try of :func:`write_prepared` on a connection of its own to the shard's node (a watch is per
    connection); None when a watched key changed. The connection is dropped on any failure."""
    group, side = prepared.group, MODALITIES.index(prepared.group.modality)
    keys = store.keys
    pool = node_client(store.client, keys.seq).connection_pool
    conn = pool.get_connection()
    try:
        seq, held = _watch(conn, store, side, group.ids)
        counts, befores, dropped = dict(prepared.counts), [], []
        if any(held):  # replaced items: counts, entries, feed
            befores = [old[: HEADER.size] for old in held]
            for old in filter(None, held):
                bucket, label = HEADER.unpack(old[: HEADER.size])
                counts[bucket] = counts.get(bucket, 0) - 1
                dropped.append(label)
        width = len(prepared.values) // len(group.ids)
        feed = msgpack.packb((side, group.ids, prepared.values, width, befores))
        seq += 1
        commands = [hiredis.pack_command(("MULTI",))]
        if dropped:  # before the new entries, as in the script
            commands.append(hiredis.pack_command(("HDEL", keys.entries[group.modality], *dropped)))
        commands += prepared.commands
        commands += [
            hiredis.pack_command(("HINCRBY", keys.counts[group.modality], b, d)) for b, d in counts.items() if d
        ]
        commands += [
            hiredis.pack_command(("SET", keys.seq, seq)),
            hiredis.pack_command(("XADD", keys.feed, "MAXLEN", "~", feed_length, f"{seq}-0", "chunk", feed)),
            hiredis.pack_command(("HSET", store.bundle_keys.import_progress(job), chunk, seq)),
            hiredis.pack_command(("EXEC",)),
        ]
        replicas, wait_ms = acknowledgement(store.client)
        if replicas:  # on this connection, after EXEC: WAIT counts the replicas holding this connection's writes
            commands.append(hiredis.pack_command(("WAIT", replicas, wait_ms)))
        conn.send_packed_command(commands)
        replies = [conn.read_response() for _ in commands]
        confirmed = replies.pop() if replicas else 0
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
    confirm(confirmed, replicas, wait_ms)
    return seq


def _watch(conn: redis.connection.Connection, store: ShardStore, side: int, ids: Sequence[str]) -> tuple[int, list]:
    """``WATCH`` what a chunk's write depends on, then check it with :data:`_CHECK` in the same round
    trip: the feed position and each id's stored value under its own modality (b'' where absent)."""
    state = [store.bundle_keys.rebuilding, store.bundle_keys.active, store.keys.seq]
    items = [store.keys.items[modality] for modality in MODALITIES]
    check = ("EVAL", _CHECK, len(state) + len(items), *state, *items, store.generation, side, msgpack.packb(list(ids)))
    commands = [("WATCH", *state, *items), check]
    conn.send_packed_command([hiredis.pack_command(command) for command in commands])
    _, (seq, held) = [conn.read_response() for _ in commands]
    return int(seq), msgpack.unpackb(held, raw=True)
