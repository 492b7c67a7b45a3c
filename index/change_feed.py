"""Reading the change feed: the stream every write appends to, which each serving process applies in order.

An entry's id is ``<seq>-0``. A batch or a delete (the store's scripts) is ``{items: msgpack rows}``, a row
per item: side, id, value (empty once deleted), metadata (not kept), the replaced value's header (empty when
new). An import chunk (``index.import_transaction``) is ``{chunk: msgpack columns}``: side, ids, the values
as one string, their width, the replaced headers (none when every item is new).

Each shard of an index has its own feed, numbered on its own (``index.shards``); entries hold the shard's
own labels, which reading turns into the labels serving processes hold.

After a failover the feed is read from the promoted replica, which may lack the last changes the old
primary had (replication is asynchronous): :meth:`ChangeFeed.continues` tells a follower whether it can
go on from where it was or must load the generation again; on a cluster each shard's feed is checked on
its own, against the master holding it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import msgpack
import redis

from index.errors import FeedGapError
from index.redis_calls import call
from index.redis_keys import GenerationKeys
from index.stored_values import HEADER, MODALITIES, header

_FEED_READ = 500  # feed entries per XRANGE/XREAD: half a feed, so a catch-up takes a few reads at most


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
    shard: int = 0  # the shard whose feed numbers it

    def digest(self) -> bytes:
        """What the change does, in 16 bytes: a follower keeps this of the last change it applied (not the
        change, which may be a whole import chunk) to compare with a promoted primary's."""
        rows = [(item.modality, item.id, item.now, item.previous) for item in self.items]
        return hashlib.blake2b(msgpack.packb([self.seq, rows]), digest_size=16).digest()


def _changed(side: int, item: bytes, value: bytes, _metadata: bytes, previous: bytes) -> ChangedItem:
    """A feed row as a change; its metadata is not kept: processes read it from Redis with search results."""
    bucket, label = HEADER.unpack(value[: HEADER.size]) if value else (0, 0)
    now = (bucket, label, value[HEADER.size :]) if value else None
    return ChangedItem(MODALITIES[side], item.decode(), now, header(previous))


def _chunk_changes(side: int, ids: list[bytes], values: bytes, width: int, befores: list[bytes]) -> list[ChangedItem]:
    """An import chunk's feed entry as changes."""
    befores = befores or [b""] * len(ids)
    return [
        _changed(side, item, values[row * width : (row + 1) * width], b"", before)
        for row, (item, before) in enumerate(zip(ids, befores, strict=True))
    ]


def _relabelled(item: ChangedItem, shard: int, shards: int) -> ChangedItem:
    """A shard's own labels → the labels serving processes hold."""
    now = None if item.now is None else (item.now[0], item.now[1] * shards + shard, item.now[2])
    previous = None if item.previous is None else (item.previous[0], item.previous[1] * shards + shard)
    return ChangedItem(item.modality, item.id, now, previous)


def _decode(entries: list, shard: int = 0, shards: int = 1) -> list[Change]:
    """Feed entries of a shard as returned by XRANGE/XREAD → changes."""
    changes = []
    for entry_id, fields in entries:
        if b"chunk" in fields:
            items = _chunk_changes(*msgpack.unpackb(fields[b"chunk"], raw=True))
        else:
            items = [_changed(*row) for row in msgpack.unpackb(fields[b"items"], raw=True)]
        if shards > 1:
            items = [_relabelled(item, shard, shards) for item in items]
        changes.append(Change(int(entry_id.split(b"-")[0]), items, shard))
    return changes


@dataclass(frozen=True)
class ChangeFeed:
    """The change feed of one shard of one generation, read."""

    client: redis.Redis
    keys: GenerationKeys
    shard: int = 0
    shards: int = 1

    def position(self) -> int:
        """The number of the last change written (0 before the first)."""
        return int(call(self.client.get, self.keys.seq) or 0)

    def after(self, seq: int, until: int | None = None) -> list[Change]:
        """The changes numbered after ``seq`` (up to ``until``), in order; :class:`FeedGapError` when some
        of them have been trimmed from the feed."""
        end = "+" if until is None else f"{until}-0"
        changes: list[Change] = []
        while True:
            start = f"{(changes[-1].seq if changes else seq) + 1}-0"
            found = call(self.client.xrange, self.keys.feed, start, end, count=_FEED_READ)
            page = _decode(found, self.shard, self.shards)
            changes += page
            if len(page) < _FEED_READ:
                break
        numbers = [change.seq for change in changes]
        wanted = seq + len(changes) if until is None else until
        if numbers != list(range(seq + 1, wanted + 1)):
            raise FeedGapError(f"changes {seq + 1}…{wanted} of {self.keys.feed} are no longer all in the feed")
        return changes

    def entry(self, seq: int) -> Change | None:
        """Change ``seq`` as this feed holds it; None when it is not (yet, or any longer) in the feed."""
        found = _decode(call(self.client.xrange, self.keys.feed, f"{seq}-0", f"{seq}-0"), self.shard, self.shards)
        return found[0] if found else None

    def continues(self, seq: int, last: bytes | None) -> bool:
        """Whether this feed (say, on a promoted replica) continues the one a follower applied up to change
        ``seq``, ``last`` being that change's digest: it holds change ``seq``, and as it was applied. False
        when the feed stops short of it (the change was lost with the old primary), holds another change
        under that number (written after the loss), or no longer holds it: then the follower reloads."""
        if seq == 0:
            return True
        if last is None or self.position() < seq:
            return False
        found = self.entry(seq)
        return found is not None and found.digest() == last

    def wait(self, seq: int, block_ms: int) -> list[Change]:
        """The changes after ``seq`` already in the feed, or, when there are none, those that arrive
        within ``block_ms`` (possibly none). Not checked for gaps: :meth:`after` is."""
        found = call(self.client.xread, {self.keys.feed: f"{seq}-0"}, count=_FEED_READ, block=block_ms)
        return _decode(found[0][1], self.shard, self.shards) if found else []
