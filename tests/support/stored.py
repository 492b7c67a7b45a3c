"""What an index holds in Redis, read straight from its hashes, and the invariants of a whole write: every
item has its entry (id and metadata under its label), the bucket counts equal the items per bucket, and no
label is given twice (an item written once per id, none half-written)."""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass

import redis

from index.store import RedisStore
from index.stored_values import MODALITIES

_HEADER = struct.Struct(">IQ")


@dataclass(frozen=True)
class Stored:
    bucket: int
    label: int
    code: bytes
    metadata: dict


def stored_items(client: redis.Redis, index_name: str, bundle_id: str, modality: str) -> dict[str, Stored]:
    """Every item of a modality in the active generation, over every shard, by id (labels as serving
    processes hold them: ``local · S + shard``)."""
    store = RedisStore(client, index_name, bundle_id)
    store = store.at(store.active_generation())
    items = {}
    for part in store.parts:
        values = client.hgetall(part.keys.items[modality])
        entries = {
            int(label): entry.partition(b"\n") for label, entry in client.hgetall(part.keys.entries[modality]).items()
        }
        for item, value in values.items():
            bucket, label = _HEADER.unpack(value[: _HEADER.size])
            named, _, meta = entries.get(label, (None, None, None))
            metadata = json.loads(meta) if named == item else None
            items[item.decode()] = Stored(bucket, label * store.shards + part.shard, value[_HEADER.size :], metadata)
    return items


def assert_whole(client: redis.Redis, index_name: str, bundle_id: str) -> dict[str, dict[str, Stored]]:
    """The invariants of whole writes; returns the items of each modality."""
    store = RedisStore(client, index_name, bundle_id)
    store = store.at(store.active_generation())
    items = {m: stored_items(client, index_name, bundle_id, m) for m in MODALITIES}
    labels: list[int] = []
    for modality, found in items.items():
        entries = sum(client.hlen(part.keys.entries[modality]) for part in store.parts)
        assert entries == len(found), f"{modality}: an entry without an item"
        assert all(item.metadata is not None for item in found.values()), f"{modality}: an item without its entry"
        members = Counter(item.bucket for item in found.values())
        counts = {bucket: count for bucket, count in store.counts(modality).items() if count}
        assert counts == dict(members), f"{modality}: bucket counts differ from the items per bucket"
        labels += [item.label for item in found.values()]
    assert len(labels) == len(set(labels)), "a label is given twice"
    return items
