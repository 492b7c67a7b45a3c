"""Replicated Redis, below the service: a write is acknowledged only once WAIT confirms it on the replicas
the client asks for; a follower whose primary changes goes on only where the new primary's feed continues
what it applied, and reloads from that primary otherwise.

Real redis-servers on loopback, started here: a primary and a replica (``REPLICAOF``), and a "failover"
made by promoting the replica (``REPLICAOF NO ONE``) and pointing the client's pool at it, which is what
Sentinel's pool does on its next connection (``tests/deploy/test_ha_failover.py`` runs Sentinel itself).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis

from index.code_space import CodeSpace
from index.engine import HashIndex, Item
from index.errors import NotReplicatedError
from index.redis_connection import Client, RedisTarget, connect, parse_sentinels, primary
from index.redis_server import RedisServer
from tests.support.ingest_stream import BITS, centers, code

SPACE = CodeSpace("replicated", BITS, centers(), "v1")


def _items(first: int, n: int) -> list[Item]:
    return [Item(f"item{i}", "image", code(i), {"i": i}) for i in range(first, first + n)]


def _synced(replica: RedisServer, primary_node: RedisServer) -> None:
    """Until the replica holds everything the primary wrote."""
    deadline = time.monotonic() + 10
    while primary_node.client().info("replication")["master_repl_offset"] != replica.client().info("replication").get(
        "slave_repl_offset"
    ):
        assert time.monotonic() < deadline, "replica did not catch up"
        time.sleep(0.02)


def _answers(index: HashIndex) -> list:
    """Every test code's ranking (ids and distances): equal answers mean the same items in memory."""
    queries = np.stack([code(i) for i in range(30)])
    return [[(h.id, h.distance) for h in row] for row in index.search("image", queries, k=30, probe=None)]


def _fail_over(client: redis.Redis, to: RedisServer) -> None:
    """Promote ``to`` and send ``client``'s next connections there, as Sentinel's pool would."""
    to.client().replicaof("NO", "ONE")
    client.connection_pool.connection_kwargs["port"] = to.port
    client.connection_pool.disconnect()
    client.connection_pool.reset()  # connections are made anew, to the new port


@pytest.fixture
def pair(tmp_path: Path):
    """A primary and its replica."""
    first = RedisServer(tmp_path / "primary", options=["--repl-diskless-sync-delay", "0"]).start()
    second = RedisServer(tmp_path / "replica", options=["--replicaof", "127.0.0.1", str(first.port)]).start()
    _synced(second, first)
    yield first, second
    for node in (second, first):  # by SIGKILL: nothing of theirs is needed after the test
        node.process.kill()
        node.process.wait()


def test_sentinel_addresses_and_the_default_number_of_replicas_a_write_waits_for() -> None:
    assert parse_sentinels("a:26379, 10.0.0.2:26380") == (("a", 26379), ("10.0.0.2", 26380))
    assert parse_sentinels(None) == parse_sentinels("") == ()
    with pytest.raises(ValueError, match="host:port"):
        parse_sentinels("a")
    assert RedisTarget(sentinels=(("a", 1),)).replicas == 1  # Sentinel mode: 1 unless told
    assert RedisTarget(url="redis://x").replicas == 0  # one node: today's behaviour
    assert RedisTarget(sentinels=(("a", 1),), wait_replicas=0).replicas == 0


def test_a_write_is_acknowledged_once_a_replica_holds_it(pair) -> None:
    first, second = pair
    client = connect(RedisTarget(first.url, wait_replicas=1))
    assert isinstance(client, Client) and client.wait_replicas == 1
    index = HashIndex.open(client, "acked", SPACE)
    index.add(_items(0, 5))
    on_replica = index.store.keys.items["image"]
    assert second.client().hlen(on_replica) == 5  # read on the replica as soon as the write returned
    index.remove("item0")
    assert not second.client().hexists(on_replica, "item0")


def test_a_write_short_of_replicas_is_refused_yet_applied_on_the_primary_and_safe_to_retry(tmp_path: Path) -> None:
    alone = RedisServer(tmp_path / "alone").start()
    try:
        index = HashIndex.open(connect(RedisTarget(alone.url, wait_replicas=1, wait_ms=50)), "short", SPACE)
        with pytest.raises(NotReplicatedError, match="confirmed by 0 of the 1 replica"):
            index.add(_items(0, 3))
        assert alone.client().hlen(index.store.keys.items["image"]) == 3  # the primary ran the script (docs/ha.md)
        with pytest.raises(NotReplicatedError):
            index.add(_items(0, 3))  # the same batch again: the same 3 items, not 6
        assert alone.client().hlen(index.store.keys.items["image"]) == 3
        plain = HashIndex.open(connect(RedisTarget(alone.url)), "short", SPACE)  # WAIT 0: acknowledged as before
        plain.add(_items(3, 1))
        assert plain.stats()["items"]["image"] == 4
    finally:
        alone.stop()


def test_a_follower_goes_on_without_reloading_when_the_promoted_replica_holds_all_it_applied(pair) -> None:
    first, second = pair
    client = connect(RedisTarget(first.url))
    index = HashIndex.open(client, "continues", SPACE)
    index.add(_items(0, 10))
    _synced(second, first)
    loaded = index.generation
    before = primary(client)
    _fail_over(client, second)
    index.check_primary()
    assert index.primaries[0] != before and index.primaries[0].address.endswith(f":{second.port}")
    assert index.generation is loaded  # continuity proven: nothing reloaded
    index.add(_items(10, 2))  # the next writes land on the promoted one and apply here as usual
    assert index.stats()["items"]["image"] == 12


def test_a_follower_reloads_when_the_promoted_replica_lost_changes_it_applied(pair) -> None:
    first, second = pair
    client = connect(RedisTarget(first.url))
    index = HashIndex.open(client, "lost", SPACE)
    index.add(_items(0, 10))
    _synced(second, first)
    second.client().replicaof("NO", "ONE")  # the replica is cut off: the next write reaches the primary only
    index.add(_items(10, 3))  # applied here, never replicated (WAIT 0)
    assert index.stats()["items"]["image"] == 13
    _fail_over(client, second)
    index.check_primary()
    assert index.stats()["items"]["image"] == 10  # reloaded: what the new primary holds, no item it lacks
    assert _answers(index) == _answers(HashIndex.open(second.client(), "lost", SPACE))


def test_a_follower_reloads_when_the_promoted_replica_holds_another_change_under_the_same_number(pair) -> None:
    first, second = pair
    client = connect(RedisTarget(first.url))
    index = HashIndex.open(client, "diverged", SPACE)
    index.add(_items(0, 4))
    _synced(second, first)
    second.client().replicaof("NO", "ONE")
    index.add(_items(4, 1))  # change 2 on the old primary only
    other = HashIndex.open(connect(RedisTarget(second.url)), "diverged", SPACE)
    other.add(_items(20, 1))  # change 2 on the promoted one: another item under the same number
    _fail_over(client, second)
    index.check_primary()
    # Reloaded: without it, item4's code would stay in memory under the label the new primary gave item20,
    # and a search would answer item20 at item4's distance.
    assert _answers(index) == _answers(other)
