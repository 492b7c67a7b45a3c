"""An index split into S shards: an item's shard from its id, and the FAISS label that names the shard.

The shard of an id is ``crc32(id) mod S`` (stable across processes and versions, unlike ``hash()``). Each
shard allocates its own labels; the label a serving process holds (its FAISS id) is ``local · S + shard``,
so a ranked label names the shard whose ``entries`` hash resolves it. S = 1 makes both the identity.
S is fixed when the index is created and recorded (``IndexKeys.shards``); an index without the record was
made before shards and is read as one.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from index.redis_calls import call
from index.redis_connection import is_cluster
from index.redis_keys import IndexKeys


def shard_of(ids: Sequence[str], shards: int) -> np.ndarray:
    """Each id's shard."""
    if shards == 1:
        return np.zeros(len(ids), dtype=np.int64)
    return np.array([zlib.crc32(item.encode()) % shards for item in ids], dtype=np.int64)


def global_labels(local: np.ndarray | int, shard: int, shards: int) -> np.ndarray | int:
    """A shard's own labels → the labels serving processes hold."""
    return local * shards + shard


def local_labels(labels: np.ndarray | int, shards: int) -> np.ndarray | int:
    """Labels serving processes hold → their shard's own (the shard is ``label % shards``)."""
    return labels // shards


def default_shards(client: object) -> int:
    """S for a new index: one per primary of a cluster, one on a plain Redis."""
    if not is_cluster(client):
        return 1
    return len(client.get_primaries())


def shard_count(client, index_name: str, wanted: int | None = None) -> int:
    """The index's S: as recorded; a new index records ``wanted`` (or :func:`default_shards`). An index
    of before shards (items, no record) stays at 1: the record is written only where no key of it exists."""
    key = IndexKeys(index_name).shards
    recorded = call(client.get, key)
    if recorded is not None:
        return int(recorded)
    if wanted is None:
        wanted = default_shards(client)
    if wanted > 1 and not is_cluster(client) and _has_keys(client, index_name):
        wanted = 1  # written before shards: read as one shard, as it is
    call(client.set, key, wanted, nx=True)
    return int(call(client.get, key))


def _has_keys(client, index_name: str) -> bool:
    return next(iter(client.scan_iter(match=f"{IndexKeys(index_name).prefix}*:active", count=1000)), None) is not None
