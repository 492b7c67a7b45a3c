"""Several processes serve one index: each applies Redis's change feed in order and answers alike.

Each ``HashIndex`` here stands for one service process (a uvicorn worker): they share a redis-server
and an index name, and nothing else.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

import index.shard_store
from index.centers import fit_centers
from index.code_space import CodeSpace
from index.codes import pack_signs, to_signs, unpack_signs
from index.engine import HashIndex, Item
from index.stored_values import MODALITIES

BITS = 16
CODES = pack_signs(to_signs(np.random.default_rng(3).normal(size=(40, BITS))))  # 40 codes: many ties


def _open(server, name: str) -> HashIndex:
    rng = np.random.default_rng(0)
    centers, _ = fit_centers(unpack_signs(CODES, BITS), 4, rng)
    return HashIndex.open(server.client(), name, CodeSpace("bundle", BITS, centers, "v1"))


def _answers(index: HashIndex) -> list:
    """Every query code's full ranking (ids, distances, buckets, metadata) over both modalities: equal
    answers mean the same items, the same metadata and the same order among ties."""
    return [
        [(h.id, h.distance, h.bucket, h.metadata) for h in row]
        for modality in MODALITIES
        for row in index.search(modality, CODES, k=200)
    ]


def _write_history(index: HashIndex, rounds: int, seed: int) -> None:
    """Inserts, replacements (new code or metadata) and deletes, of both modalities."""
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        batch = {}
        for _ in range(int(rng.integers(1, 6))):
            n = int(rng.integers(0, 30))
            modality = "image" if n % 2 else "text"
            batch[f"{modality}{n}"] = Item(f"{modality}{n}", modality, CODES[int(rng.integers(0, 40))], {"r": r})
        index.add(list(batch.values()))
        if r % 4 == 3:
            victim = f"text{2 * int(rng.integers(0, 15))}"
            if index.store.modality_of(victim):
                index.remove(victim)


def test_a_process_applies_writes_of_another_and_then_answers_exactly_alike(any_redis) -> None:
    name = uuid.uuid4().hex
    first, second = _open(any_redis, name), _open(any_redis, name)
    _write_history(first, 30, seed=1)
    _write_history(second, 30, seed=2)  # second applied its own writes, not yet first's
    assert _answers(first) != _answers(second)
    first.catch_up()
    second.catch_up()
    assert _answers(first) == _answers(second)
    assert _answers(_open(any_redis, name)) == _answers(first)  # and a process starting now, too


def test_follow_applies_a_write_of_another_process_as_it_arrives(any_redis) -> None:
    name = uuid.uuid4().hex
    writer, follower = _open(any_redis, name), _open(any_redis, name)
    applied: list[int] = []
    thread = threading.Thread(target=lambda: applied.append(follower.follow(block_ms=5000)))
    thread.start()
    writer.add([Item("late", "image", CODES[0], {"by": "writer"})])
    thread.join(10)
    assert applied == [1]
    [[hit]] = follower.search("image", CODES[:1], k=1)
    assert (hit.id, hit.metadata) == ("late", {"by": "writer"})
    assert follower.follow(block_ms=10) == 0  # nothing new: returns after the wait, applying nothing


def test_replaying_changes_a_snapshot_already_holds_changes_nothing(any_redis) -> None:
    """A process reads the feed position, then the items; changes made in between are in both."""
    name = uuid.uuid4().hex
    writer = _open(any_redis, name)
    _write_history(writer, 20, seed=4)
    loaded = _open(any_redis, name)
    before = _answers(loaded)
    for change in [change for part in loaded.store.parts for change in part.feed.after(0)]:
        loaded.generation.apply(change)
    assert _answers(loaded) == before == _answers(writer)


def test_a_process_loading_while_another_writes_ends_identical(any_redis) -> None:
    name = uuid.uuid4().hex
    writer = _open(any_redis, name)
    _write_history(writer, 10, seed=5)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (_write_history(writer, 60, seed=6), done.set()))
    thread.start()
    while not done.is_set():
        loading = _open(any_redis, name)
        thread.join(0.01)
    thread.join()
    loading.catch_up()
    assert _answers(loading) == _answers(writer)


def test_a_process_that_fell_behind_the_trimmed_feed_reloads_and_answers_alike(any_redis, monkeypatch) -> None:
    monkeypatch.setattr(index.shard_store, "FEED_LENGTH", 10)  # Redis trims whole stream nodes of 100 entries
    name = uuid.uuid4().hex
    writer, idle = _open(any_redis, name), _open(any_redis, name)
    writes = 250 * writer.store.shards  # each shard's feed gets well over 100 (30 ids over the shards)
    for i in range(writes):
        writer.add([Item(f"image{i % 30}", "image", CODES[i % 40], {"i": i})])
    feeds = [any_redis.client().xlen(part.keys.feed) for part in writer.store.parts]
    assert all(length < written for length, written in zip(feeds, writer.generation.applied, strict=True))
    idle.catch_up()  # every shard's first changes are gone
    assert idle.generation.applied == writer.generation.applied and sum(writer.generation.applied) == writes
    assert _answers(idle) == _answers(writer)


@pytest.mark.parametrize("late", [[1, 4], [2]])
def test_a_bucket_stays_in_label_order_when_an_older_label_arrives_late(late: list[int]) -> None:
    from index.scan import BucketScan

    scan = BucketScan(BITS, 1)
    code = CODES[:1]
    early = [label for label in range(1, 6) if label not in late]
    scan.add(np.array(early), np.repeat(code, len(early), axis=0), np.zeros(len(early), np.int64))
    scan.add(np.array(late), np.repeat(code, len(late), axis=0), np.zeros(len(late), np.int64))
    _, labels, _ = scan.search(code, np.zeros((1, 1), np.int64), k=5)
    assert labels[0].tolist() == [1, 2, 3, 4, 5]  # equal distances: insertion (label) order
