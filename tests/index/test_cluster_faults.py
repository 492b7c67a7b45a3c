"""The index on a real Redis Cluster (3 masters + 3 replicas on loopback) through its faults: a master
SIGKILLed mid-ingest and its replica promoted loses no acknowledged item (writes wait for a replica,
``WAIT 1``, each shard's on the master holding it), slots moved between masters while the index is written
and searched fail no call, and a follower checks each shard against the master now holding it: it goes on
when the promoted replica's feed continues what it applied, and reloads when that replica lost changes."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from index.code_space import CodeSpace
from index.engine import HashIndex, Item
from index.errors import StoreUnavailableError
from index.redis_connection import RedisTarget, connect
from index.redis_keys import IndexKeys
from index.shards import shard_count, shard_of
from tests.support.ingest_stream import BITS, centers, code
from tests.support.redis_cluster import RedisClusterServer

ROOT = Path(__file__).resolve().parents[2]
_SLOTS_MOVED = 400  # about: enough to move while writes go on, few enough to keep the test short
SPACE = CodeSpace("stream", BITS, centers(), "v1")


@pytest.fixture
def cluster(tmp_path: Path):
    """A cluster of this test's own: the test breaks it."""
    server = RedisClusterServer(tmp_path / "cluster").start()
    yield server
    server.stop()


def _acknowledged(lines: list[str]) -> set[str]:
    """The ids the writer printed as acknowledged."""
    ids: set[str] = set()
    for line in lines:
        word, *rest = line.split()
        if word == "ack":
            ids.update(f"item{i}" for i in range(int(rest[0]), int(rest[1]) + 1))
        elif word == "stored":
            ids.update(rest)
    return ids


def _assert_all_found(index: HashIndex, ids: set[str]) -> None:
    numbers = sorted(int(item.removeprefix("item")) for item in ids)
    results = index.search("image", np.stack([code(i) for i in numbers]), k=10)
    for i, row in zip(numbers, results, strict=True):  # found by its own code, with its metadata
        assert any(h.id == f"item{i}" and h.distance == 0 and h.metadata == {"i": i} for h in row), f"item{i} lost"


def test_no_acknowledged_item_is_lost_when_a_master_is_killed_and_its_replica_promoted(cluster) -> None:
    name = uuid.uuid4().hex
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.support.ingest_stream", cluster.url, name, "1"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(writer.stdout), daemon=True).start()
    try:
        _wait_for(lambda: len(_acknowledged(lines)) >= 1_500, 60)
        victim = cluster.master_ports()[0]
        cluster.kill(victim)  # mid-ingest: a batch may be in flight on it
        killed_at = len(lines)
        _wait_for(lambda: victim not in cluster.master_ports(), 30)  # its replica promoted
        _wait_for(lambda: len(lines) >= killed_at + 5, 60)  # the writer goes on past the failover
    finally:
        writer.kill()
        writer.wait()
    acknowledged = _acknowledged(lines)
    # past the failover the promoted master has no replica: WAIT 1 fails there, so its shard's parts are
    # reported unacknowledged while the other shards' are acknowledged (the batch is partial)
    assert any(line.startswith("stored ") for line in lines[killed_at:])
    index = HashIndex.open(cluster.client(), name, CodeSpace("stream", BITS, centers(), "v1"))
    assert index.store.shards == 3
    _assert_all_found(index, acknowledged)


def _name_moved_early(cluster, client) -> tuple[str, int]:
    """An index name whose shard 0 lives in one of the first slots of its master, which a reshard moves
    first (``redis-cli`` moves a master's slots in order), and how many slots to move to move it."""
    starts = [start for (start, _end), _port in cluster.slot_ranges()]
    for attempt in range(10_000):
        name = f"reshard-{attempt}"
        slot = client.keyslot(IndexKeys(name).shard_prefix(0, 3, True) + "seq")
        offset = slot - max(start for start in starts if start <= slot)
        if offset < _SLOTS_MOVED // 2:
            return name, offset + _SLOTS_MOVED // 2
    raise AssertionError("no such name")


def test_slots_moved_between_masters_while_writing_and_searching_fail_no_call(cluster) -> None:
    client = cluster.client()
    name, slots = _name_moved_early(cluster, client)
    index = HashIndex.open(client, name, CodeSpace("stream", BITS, centers(), "v1"))
    assert shard_count(client, name) == 3
    stop, failures, written = threading.Event(), [], []

    def write() -> None:
        start = 0
        while not stop.is_set():
            batch = [Item(f"item{i}", "image", code(i), {"i": i}) for i in range(start, start + 20)]
            try:
                index.add(batch)
                written.extend(item.id for item in batch)
            except Exception as exc:  # every failure is the test's finding
                failures.append(f"add: {exc!r}")
            start += 20

    def search() -> None:
        queries = np.stack([code(i) for i in range(8)])
        while not stop.is_set():
            try:
                index.search("image", queries, k=5)
            except Exception as exc:
                failures.append(f"search: {exc!r}")

    threads = [threading.Thread(target=write), threading.Thread(target=search)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        masters = cluster.master_ports()
        holder = client.get_node_from_key(index.store.parts[0].keys.seq).port  # shard 0's slot moves
        target = next(port for port in masters if port != holder)
        before = len(written)
        moved = cluster.reshard(holder, target, slots)  # shard 0's slot among them
        during = len(written) - before
        _wait_for(lambda: client.get_node_from_key(index.store.parts[0].keys.seq).port == target, 30)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert failures == []
    assert during > 0 and "Moving slot" in moved.stdout  # writes went on while the slots moved
    fresh = HashIndex.open(cluster.client(), name, CodeSpace("stream", BITS, centers(), "v1"))
    assert fresh.stats()["items"]["image"] == index.stats()["items"]["image"] == len(set(written))
    _assert_all_found(fresh, set(written))


def _wait_for(ready, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _shard_nodes(cluster, client, index: HashIndex, shard: int) -> tuple[int, int]:
    """(master port, replica port) of the shard: the master holding its slot and that master's replica."""
    master = client.get_node_from_key(index.store.parts[shard].keys.seq).port
    replicas = redis.Redis(port=master).info("replication")
    return master, int(replicas["slave0"]["port"])


def _synced(master: int, replica: int) -> None:
    """Until the replica holds everything its master wrote."""
    _wait_for(lambda: redis.Redis(port=master).info("replication")["master_repl_offset"]
              == redis.Redis(port=replica).info("replication").get("slave_repl_offset"), 10)  # fmt: skip


def _checked(index: HashIndex, shard: int) -> None:
    """Until the shard's follower check passes (a 503 while its master fails over)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            index.check_primary(shard)
            return
        except StoreUnavailableError:
            assert time.monotonic() < deadline, "the shard's primary was never checked"
            time.sleep(0.1)


def _items(first: int, n: int) -> list[Item]:
    return [Item(f"item{i}", "image", code(i), {"i": i}) for i in range(first, first + n)]


def _shard_items(shard: int, first: int, n: int) -> list[Item]:
    """``n`` items of the 3-shard index's ``shard``, numbered from ``first`` on."""
    numbers = (i for i in range(first, first + 100 * n) if shard_of([f"item{i}"], 3)[0] == shard)
    return [Item(f"item{i}", "image", code(i), {"i": i}) for i in itertools.islice(numbers, n)]


def test_each_shards_write_waits_for_its_masters_replica_and_its_follower_goes_on_past_its_failover(cluster) -> None:
    client = connect(RedisTarget(cluster.url, wait_replicas=1))
    index = HashIndex.open(client, "per-shard", SPACE)
    index.add(_items(0, 60))  # WAIT 1 on each shard's master: every replica holds its shard's part
    for shard in range(3):
        master, replica = _shard_nodes(cluster, client, index, shard)
        items = index.store.parts[shard].keys.items["image"]
        on_replica = redis.Redis(port=replica)
        on_replica.readonly()
        assert on_replica.hlen(items) == redis.Redis(port=master).hlen(items) > 0  # read as soon as add returned
    before, loaded = list(index.primaries), index.generation
    assert len({serving.address for serving in before}) == 3  # each shard on its own master
    master, replica = _shard_nodes(cluster, client, index, 1)
    _synced(master, replica)
    # the replica takes over at once (no vote: deterministic under load), holding everything its master had
    redis.Redis(port=replica).execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    _wait_for(lambda: replica in cluster.master_ports(), 30)
    for shard in range(3):
        _checked(index, shard)
    assert index.primaries[1] != before[1] and index.primaries[1].address.endswith(f":{replica}")
    assert [index.primaries[0], index.primaries[2]] == [before[0], before[2]]  # the other shards kept theirs
    assert index.generation is loaded  # shard 1's feed continues: nothing reloaded
    index.add(_items(60, 30))  # the promoted master (its old one now its replica) takes shard 1's writes
    assert index.stats()["items"]["image"] == 90


def test_a_follower_reloads_when_a_shards_promoted_replica_lost_changes_it_applied(cluster) -> None:
    client = cluster.client()
    index = HashIndex.open(client, "per-shard-lost", SPACE)
    index.add(_items(0, 60))
    master, replica = _shard_nodes(cluster, client, index, 1)
    _synced(master, replica)
    os.kill(cluster.processes[replica].pid, signal.SIGSTOP)  # it stays cut off until its master is dead:
    redis.Redis(port=master).client_kill_filter(_type="replica")  # the next write never reaches it
    try:
        index.add(_shard_items(1, 1000, 5))  # applied here and on shard 1's master only (WAIT 0)
        assert index.stats()["items"]["image"] == 65
        cluster.kill(master)
    finally:
        os.kill(cluster.processes[replica].pid, signal.SIGCONT)
    _wait_for(lambda: replica in cluster.master_ports(), 60)  # promoted, without the 5 items
    _checked(index, 1)
    assert index.stats()["items"]["image"] == 60  # reloaded: what the shards' masters hold, no item they lack
    fresh = HashIndex.open(cluster.client(), "per-shard-lost", SPACE)
    queries = np.stack([code(i) for i in range(30)])
    assert [[(h.id, h.distance) for h in row] for row in index.search("image", queries, k=30, probe=None)] == [
        [(h.id, h.distance) for h in row] for row in fresh.search("image", queries, k=30, probe=None)
    ]


def test_a_whole_cluster_down_is_store_unavailable_and_its_followers_go_on_once_it_is_back(tmp_path: Path) -> None:
    """Every node stopped (a cluster restarted): writes, searches and the readiness ping fail with the
    index's StoreUnavailableError (the service's 503), not redis-py's cluster exception; the follower
    threads outlive it and apply another process's writes once the nodes are back."""
    cluster = RedisClusterServer(tmp_path / "cluster", replicas=0).start()  # no replica to fail over to
    try:
        index = HashIndex.open(cluster.client(), "whole-outage", SPACE)
        index.start_following(refresh_seconds=1.0)
        index.add(_items(0, 30))
        ports = list(cluster.processes)
        cluster.stop()
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            index.add(_items(30, 5))
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            index.search("image", code(0)[None], k=1)
        assert not index.ping()
        _wait_for(lambda: None in index.primaries, 10)  # the followers met the outage
        for port in ports:
            cluster.start_node(port)  # same ports, data and nodes.conf: the same cluster
        cluster.wait_ok()
        HashIndex.open(cluster.client(), "whole-outage", SPACE).add(_items(30, 30))  # another process writes
        _wait_for(lambda: index.stats()["items"]["image"] == 60, 30)
        assert [h.id for h in index.search("image", code(45)[None], k=1)[0]] == ["item45"]
    finally:
        cluster.stop()
