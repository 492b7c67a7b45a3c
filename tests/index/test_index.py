"""The two-level index against a real redis-server and a Redis Cluster (``any_redis``): exact at full probe,
routed otherwise, durable."""

from __future__ import annotations

import gc
import tracemalloc
import uuid

import numpy as np
import pytest
import redis

from index.centers import fit_centers, nearest_centers
from index.code_space import CodeSpace
from index.codes import hamming_distances, pack_signs, to_signs, unpack_signs
from index.engine import HashIndex, Item
from index.errors import (
    IndexInputError,
    ItemNotFoundError,
    ModalityConflictError,
    PartialWriteError,
    StoreUnavailableError,
)
from index.layout_upgrade import upgrade_entries
from index.rebuild import rebucket
from index.redis_connection import RedisTarget, connect
from index.store import RedisStore

BITS = 16  # short codes: plenty of ties


def _codes(n: int, seed: int, bits: int = BITS) -> np.ndarray:
    return pack_signs(to_signs(np.random.default_rng(seed).normal(size=(n, bits))))


def _open(server, n_buckets: int = 8, bits: int = BITS, name: str | None = None) -> HashIndex:
    centers, _ = fit_centers(unpack_signs(_codes(500, 99, bits), bits), n_buckets, np.random.default_rng(0))
    return HashIndex.open(server.client(), name or uuid.uuid4().hex, CodeSpace("bundle1", bits, centers, "v1"))


def _items(prefix: str, modality: str, codes: np.ndarray) -> list[Item]:
    return [Item(f"{prefix}{i}", modality, c, {"n": i}) for i, c in enumerate(codes)]


def _brute_force(
    index: HashIndex, queries: np.ndarray, ids: list[str], codes: np.ndarray, k: int
) -> list[list[tuple[str, int]]]:
    """The specified ranking, in numpy over items in insertion order: by Hamming distance, then by the
    rank of the item's bucket in the query's route (nearer center first), then insertion order (over S > 1
    shards, label order: insertion order within each shard)."""
    if index.store.shards > 1:
        order = np.argsort([index.get(item).label for item in ids], kind="stable")
        ids, codes = [ids[i] for i in order], codes[order]
    d = hamming_distances(unpack_signs(queries, BITS), unpack_signs(codes, BITS))
    item_buckets = index.route(codes, 1)[:, 0]
    route_rank = np.argsort(index.route(queries, index.n_buckets), axis=1)  # [query, bucket] → rank
    ranked = []
    for q in range(len(queries)):
        order = np.lexsort((np.arange(len(codes)), route_rank[q, item_buckets], d[q]))[:k]
        ranked.append([(ids[j], int(d[q, j])) for j in order])
    return ranked


def test_full_probe_equals_brute_force_ranking_with_ties_deletes_and_reinserts(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(600, 1)
    index.add(_items("t", "text", codes[:300]))
    index.add([Item(f"t{i}", "text", codes[i]) for i in range(300, 600)])
    for i in range(0, 600, 7):
        index.remove(f"t{i}")
    reinserted = list(range(1, 600, 11))
    index.add([Item(f"t{i}", "text", codes[(i * 5) % 600]) for i in reinserted])
    # The model: insertion order, a re-insert moves an item to the end with its new code. Over S shards,
    # insertion order within each shard: labels are local · S + shard (index.shards), ties go by label.
    live = {f"t{i}": codes[i] for i in range(600) if i % 7}
    for i in reinserted:
        live.pop(f"t{i}", None)
        live[f"t{i}"] = codes[(i * 5) % 600]
    labels = {item: index.get(item).label for item in live}
    shards = index.store.shards
    for shard in range(shards):  # each shard allocates its labels in insertion order
        own = [labels[item] for item in live if labels[item] % shards == shard]
        assert own == sorted(own)
    queries = _codes(40, 2)
    hits = index.search("text", queries, k=50)
    expected = _brute_force(index, queries, list(live), np.stack(list(live.values())), 50)
    assert [[(h.id, h.distance) for h in row] for row in hits] == expected
    for i in range(0, 40, 13):  # the single-query path ranks exactly as the batched one
        assert index.search("text", queries[i : i + 1], k=50) == [hits[i]]
        assert (
            index.search("text", queries[i : i + 1], k=50, probe=3) == index.search("text", queries, 50, 3)[i : i + 1]
        )


def test_probing_fewer_buckets_scans_only_those_buckets(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(400, 3)
    index.add(_items("i", "image", codes))
    queries = _codes(10, 4)
    probes = nearest_centers(unpack_signs(queries, BITS), index.centers, 2)
    for row, allowed in zip(index.search("image", queries, k=20, probe=2), probes, strict=True):
        assert {h.bucket for h in row} <= set(allowed.tolist())
        assert [h.distance for h in row] == sorted(h.distance for h in row)


def test_items_are_routed_to_their_nearest_center_and_counts_match_members(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(300, 5)
    index.add(_items("x", "image", codes))
    index.add([Item("x0", "image", codes[1])])  # move x0 to x1's bucket
    index.remove("x2")
    buckets = nearest_centers(unpack_signs(codes, BITS), index.centers, 1)[:, 0]
    assert index.get("x0").bucket == buckets[1]
    members = index.sides["image"].scan.bucket_sizes()
    counts = index.store.counts("image")
    assert all(counts.get(b, 0) == members[b] for b in range(index.n_buckets))
    assert sum(members) == 299


def test_the_memory_index_is_a_cache_rebuilt_from_redis(any_redis) -> None:
    name = uuid.uuid4().hex
    first = _open(any_redis, name=name)
    codes = _codes(250, 6)
    first.add(_items("i", "image", codes))
    first.remove("i3")
    queries = _codes(5, 7)
    before = first.search("image", queries, k=30)
    second = _open(any_redis, name=name)
    assert second.search("image", queries, k=30) == before
    assert np.array_equal(second.centers, first.centers)


def test_search_returns_metadata_and_get_returns_the_stored_item(any_redis) -> None:
    index = _open(any_redis)
    code = _codes(1, 8)
    index.add([Item("cat", "image", code[0], {"title": "a cat"})])
    [[hit]] = index.search("image", code, k=5)
    assert (hit.id, hit.distance, hit.metadata) == ("cat", 0, {"title": "a cat"})
    stored = index.get("cat")
    assert stored.modality == "image" and stored.code == code[0].tobytes()
    with pytest.raises(ItemNotFoundError):
        index.get("dog")
    with pytest.raises(ItemNotFoundError):
        index.remove("dog")


def test_bad_input_is_rejected_and_nothing_is_half_written(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(3, 9)
    index.add([Item("a", "image", codes[0])])
    with pytest.raises(IndexInputError, match="packed uint8 of shape"):
        index.add([Item("b", "image", np.zeros(3, np.uint8))])
    with pytest.raises(IndexInputError, match="unknown modality 'audio'"):
        index.add([Item("b", "audio", codes[1])])
    # The conflicting batches' other ids lie on every shard (over S > 1 shards): refused whole, not a's shard only.
    others = [f"c{i}" for i in range(6)]
    with pytest.raises(ModalityConflictError, match="'a' is already stored as another modality"):
        index.add([Item(item, "text", codes[1]) for item in others] + [Item("a", "text", codes[2])])
    with pytest.raises(ModalityConflictError, match="'a' is already stored as another modality"):
        index.add([Item(item, "image", codes[1]) for item in others] + [Item("a", "text", codes[2])])  # both modalities
    with pytest.raises(IndexInputError, match="same id twice"):
        index.add([Item("d", "text", codes[1]), Item("d", "text", codes[2])])
    assert index.stats()["items"] == {"image": 1, "text": 0}
    assert index.store.modalities_of(others) == dict.fromkeys(others)  # conflicts wrote nothing
    with pytest.raises(IndexInputError, match="probe must be between"):
        index.search("image", codes[:1], k=1, probe=99)


def test_a_conflict_only_a_shards_script_sees_is_a_partial_write_naming_what_was_stored(
    redis_cluster, monkeypatch
) -> None:
    """Another writer storing an id as the other modality between a batch's check and its write: that id's
    shard refuses its part, the others keep theirs, and the caller is told which ids were stored."""
    index = _open(redis_cluster)
    codes = _codes(2, 9)
    index.add([Item("a", "image", codes[0])])
    monkeypatch.setattr(RedisStore, "_refuse_conflicts", lambda store, groups: None)  # 'a' stored after the check
    others = [f"c{i}" for i in range(6)]
    with pytest.raises(PartialWriteError, match="'a' is already stored as another modality") as refused:
        index.add([Item(item, "text", codes[1]) for item in others] + [Item("a", "text", codes[1])])
    stored = set(refused.value.stored)
    assert stored and stored < set(others)
    assert index.store.modalities_of(others) == {item: "text" if item in stored else None for item in others}
    assert index.stats()["items"]["text"] == len(stored)  # searchable here as well


def test_with_redis_unreachable_writes_and_searches_fail_and_memory_is_unchanged(any_redis) -> None:
    """Ids and metadata live in Redis, so a search cannot name what it ranked while Redis is away: it
    fails like a write (the service's 503), and answers again, the same, once Redis is back."""
    index = _open(any_redis)
    codes = _codes(2, 10)
    index.add([Item("kept", "image", codes[0], {"title": "kept"})])
    reachable = index.generation.store
    # nothing listens on port 1; a client as the service makes them (one retry, at once: no backoff to wait out)
    unreachable = connect(RedisTarget("redis://127.0.0.1:1"), connect_timeout=0.2)
    index.generation.store = RedisStore(unreachable, reachable.index_name, reachable.bundle_id, shards=reachable.shards)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        index.add([Item("a", "image", codes[1])])
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        index.remove("kept")
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        index.search("image", codes[:1], k=5)
    assert index.stats()["items"]["image"] == 1
    index.generation.store = reachable
    [[hit]] = index.search("image", codes[:1], k=5)
    assert (hit.id, hit.distance, hit.metadata) == ("kept", 0, {"title": "kept"})


def test_rebucket_swaps_in_new_centers_without_losing_anything(any_redis) -> None:
    name = uuid.uuid4().hex
    writer, reader = _open(any_redis, name=name), _open(any_redis, name=name)
    codes = _codes(300, 11)
    writer.add(_items("i", "image", codes[:200]) + _items("t", "text", codes[200:]))
    writer.remove("i5")
    queries = _codes(20, 12)
    before = {m: writer.search(m, queries, k=40) for m in ("image", "text")}

    reader.catch_up()
    summary = rebucket(writer.store, BITS, k=4)

    assert summary["generation"] == 1 and summary["items"] == {"image": 199, "text": 100}
    # Before it refreshes, a reader still ranks with the old, dropped generation, and still names its hits.
    assert {m: reader.search(m, queries, k=40) for m in ("image", "text")} == before
    assert reader.refresh() and writer.refresh() and not writer.refresh()
    for index in (reader, writer):
        assert index.n_buckets == 4 and index.stats()["generation"] == 1
        for modality, live in (("image", [i for i in range(200) if i != 5]), ("text", list(range(200, 300)))):
            after = index.search(modality, queries, k=40)
            # Same distances; ties now follow the new buckets, as the ranking specifies.
            assert [[h.distance for h in row] for row in after] == [
                [h.distance for h in row] for row in before[modality]
            ]
            prefix = modality[0]
            ids = [f"{prefix}{i - 200 if prefix == 't' else i}" for i in live]
            expected = _brute_force(index, queries, ids, codes[live], 40)
            assert [[(h.id, h.distance) for h in row] for row in after] == expected
            assert all(h.metadata == {"n": int(h.id[1:])} for row in after for h in row)
    counts, members = writer.store.counts("image"), writer.sides["image"].scan.bucket_sizes()
    assert all(counts.get(b, 0) == members[b] for b in range(4))
    old = [
        key for part in writer.store.at(0).parts for key in any_redis.client().scan_iter(match=part.keys.prefix + "*")
    ]
    assert not old  # the old generation dropped, on every shard
    writer.add([Item("new", "image", codes[0])])  # writes resume after the swap
    assert reader.store.modality_of("new") == "image"


def test_writes_wait_out_a_rebucket_while_reads_go_on(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(50, 13)
    index.add(_items("i", "image", codes))
    assert index.store.set_rebuilding(60)  # as a re-bucket does, on every shard
    try:
        with pytest.raises(StoreUnavailableError, match="re-bucketed"):
            index.add([Item("x", "image", codes[0])])
        with pytest.raises(StoreUnavailableError, match="re-bucketed"):
            index.remove("i1")
        with pytest.raises(StoreUnavailableError, match="another re-bucket"):
            rebucket(index.store, BITS, k=2)
        assert len(index.search("image", codes[:1], k=5)[0]) == 5
    finally:
        index.store.clear_rebuilding()
    assert index.stats()["items"]["image"] == 50


def test_a_metadata_filter_ranks_more_candidates_until_k_match_or_the_buckets_run_out(any_redis) -> None:
    index = _open(any_redis)
    codes = _codes(500, 14)
    index.add([Item(f"i{i}", "image", c, {"kind": "rare" if i % 50 == 0 else "common"}) for i, c in enumerate(codes)])
    queries = _codes(6, 15)
    everything = index.search("image", queries, k=500)
    for wanted, k in (({"kind": "rare"}, 4), ({"kind": "rare"}, 30), ({"kind": "none"}, 3), ({}, 7)):
        expected = [
            [h for h in row if all(h.metadata.get(f) == v for f, v in wanted.items())][:k] for row in everything
        ]
        assert index.search("image", queries, k, where=wanted) == expected
    assert [len(row) for row in index.search("image", queries, 30, where={"kind": "rare"})] == [10] * 6  # all there are


def test_a_search_resolves_its_hits_in_one_redis_round_trip_per_node(any_redis, monkeypatch) -> None:
    """One request to each node holding some of the hits (the one node of a plain Redis), not one per hit
    or per shard's command."""
    index = _open(any_redis)
    index.add(_items("i", "image", _codes(200, 16)))
    sent: list[tuple[str, int]] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(connection, command, check_health=True):
        sent.append((connection.host, connection.port))
        return send(connection, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    hits = index.search("image", _codes(5, 17), k=10, probe=3)
    assert len(sent) == len(set(sent)) <= index.store.shards and all(len(row) == 10 for row in hits)


def test_an_item_replaced_or_deleted_after_ranking_is_left_out_and_k_still_filled(any_redis) -> None:
    name = uuid.uuid4().hex
    writer, reader = _open(any_redis, name=name), _open(any_redis, name=name)
    codes = _codes(100, 18)
    writer.add(_items("i", "image", codes))
    reader.catch_up()
    [top] = reader.search("image", codes[:1], k=5)
    writer.remove(top[0].id)  # the reader has not applied these yet: it still ranks the old labels
    writer.add([Item(top[1].id, "image", codes[0], {"n": "new"})])
    [hits] = reader.search("image", codes[:1], k=5)
    assert len(hits) == 5 and top[0].id not in {h.id for h in hits}
    assert all(h.metadata != {"n": "new"} for h in hits)  # a replaced item is shown by its current label only
    reader.catch_up()
    assert reader.search("image", codes[:1], k=5) == writer.search("image", codes[:1], k=5)


def _to_former_layout(index: HashIndex, label_map: bool) -> None:
    """Rewrite a generation as earlier versions kept it: metadata by id (``meta:``) and, unless
    ``label_map`` is false (the oldest layout), ids by label (``labels:``); no entries."""
    client, store = index.store.client, index.store
    for modality in ("image", "text"):
        entries = client.hgetall(store.keys.entries[modality])
        if not entries:
            continue
        named = {label: entry.partition(b"\n") for label, entry in entries.items()}
        client.hset(store.keys.former_meta[modality], mapping={item: meta for item, _, meta in named.values()})
        if label_map:
            client.hset(store.keys.former_labels[modality], mapping={label: e[0] for label, e in named.items()})
        client.delete(store.keys.entries[modality])


@pytest.mark.parametrize("label_map", [True, False], ids=["ids-and-metadata-hashes", "before-any-label-map"])
def test_a_store_of_the_former_layout_is_upgraded_at_load(redis_server, label_map: bool) -> None:
    """Before entries, a generation kept metadata by id (``meta:``) and, later, ids by label (``labels:``):
    loading it writes every item's entry, drops those hashes and answers as before."""
    name = uuid.uuid4().hex
    first = _open(redis_server, name=name)
    codes = _codes(120, 19)
    first.add(_items("i", "image", codes[:60]) + _items("t", "text", codes[60:]))
    queries = _codes(4, 20)
    before = {m: first.search(m, queries, k=20) for m in ("image", "text")}
    _to_former_layout(first, label_map)
    second = _open(redis_server, name=name)
    assert {m: second.search(m, queries, k=20) for m in ("image", "text")} == before
    assert second.get("t7").metadata == {"n": 7}
    former = [
        names[m] for names in (first.store.keys.former_meta, first.store.keys.former_labels) for m in ("image", "text")
    ]
    assert not first.store.client.exists(*former)
    assert upgrade_entries(second.store.client, second.store.keys, "image") == 0  # complete now: nothing more to write


def test_a_store_of_the_former_layout_is_upgraded_by_a_re_bucket_too(redis_server) -> None:
    name = uuid.uuid4().hex
    first = _open(redis_server, name=name)
    first.add(_items("i", "image", _codes(120, 19)))
    _to_former_layout(first, label_map=True)
    rebucket(RedisStore(redis_server.client(), name, "bundle1"), BITS, 4)  # before any process loads it
    second = _open(redis_server, name=name)
    assert second.stats()["items"]["image"] == 120 and second.get("i7").metadata == {"n": 7}


def _load_traced(client: redis.Redis, name: str, space: CodeSpace) -> tuple[HashIndex, int]:
    """A fresh load of the index and the bytes of Python heap it keeps (garbage collected before and after,
    so neither earlier garbage nor the load's own counts)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    loaded = HashIndex.open(client, name, space)
    gc.collect()
    kept = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return loaded, kept


def test_a_loaded_index_keeps_no_python_object_per_item(any_redis) -> None:
    """Only what ranking needs stays in the process: FAISS's lists (C++, not traced here) and a bit per
    label; the Python heap it keeps after a load does not grow with the items."""
    name = uuid.uuid4().hex
    writer = _open(any_redis, name=name)
    n = 20_000
    codes = _codes(n, 21)
    for start in range(0, n, 2000):
        writer.add(_items(f"item-with-a-long-id-{start}-", "text", codes[start : start + 2000]))
    one = _open(any_redis)
    one.add(_items("one-", "text", codes[:1]))
    # What any load keeps (connections and threads per shard, centers, scripts): a load of one item. The
    # clients are made before tracing: a cluster client's slot map and command table are its own.
    _, fixed = _load_traced(any_redis.client(), one.store.index_name, one.space)
    loaded, kept = _load_traced(any_redis.client(), name, writer.space)
    assert loaded.stats()["items"]["text"] == n
    # A label → (id, metadata) dict kept ~270 B per item.
    assert (kept - fixed) / n < 8, f"{(kept - fixed) / n:.1f} B per item kept in Python"


def test_with_a_reranker_the_full_probe_equals_brute_force_asymmetric_order_over_whole_tie_groups(any_redis) -> None:
    centers, _ = fit_centers(unpack_signs(_codes(500, 99), BITS), 8, np.random.default_rng(0))
    index = HashIndex.open(any_redis.client(), uuid.uuid4().hex, CodeSpace("bundle1", BITS, centers, "v1", 5))
    codes = _codes(400, 5)
    index.add(_items("t", "text", codes))
    real = np.random.default_rng(6).normal(size=(20, BITS)).astype(np.float32)
    queries = pack_signs(to_signs(real))
    signs = unpack_signs(codes, BITS).astype(np.float32)
    distances = hamming_distances(to_signs(real), signs.astype(np.int8))
    hits = index.search("text", queries, k=5, query_real=real)
    for q, row in enumerate(hits):
        bound = np.sort(distances[q])[4]  # the 5 candidates reach this distance; its whole tie group is in
        candidates = np.flatnonzero(distances[q] <= bound)
        scores = real[q] @ signs[candidates].T
        expected = candidates[np.argsort(-scores, kind="stable")][:5]
        assert [h.id for h in row] == [f"t{i}" for i in expected]
        assert [h.score for h in row] == pytest.approx(sorted(scores, reverse=True)[:5], rel=1e-5)
    assert all(h.score is None for h in index.search("text", queries, k=5)[0])  # no real code: Hamming order


def test_balanced_centers_spread_a_skewed_corpus_over_the_buckets() -> None:
    """Clusters of very uneven sizes (one holds half the codes): plain k-means gives the big one a single
    center, the capacity-bounded fit several, so its codes spread over more buckets at serving."""
    rng = np.random.default_rng(0)
    sizes = [600, 200, 100, 100, 50, 50, 25, 25, 25, 25]
    prototypes = np.where(rng.random((len(sizes), 32)) < 0.5, -1, 1)
    parts = [prototypes[i] * np.where(rng.random((n, 32)) < 0.2, -1, 1) for i, n in enumerate(sizes)]
    signs = np.concatenate(parts).astype(np.int8)
    plain = np.bincount(fit_centers(signs, 16, np.random.default_rng(1))[1], minlength=16)
    centers, assignment = fit_centers(signs, 16, np.random.default_rng(1), balance=1.5)
    balanced = np.bincount(assignment, minlength=16)
    assert assignment.tolist() == nearest_centers(signs, centers)[:, 0].tolist()  # served: the nearest center
    assert balanced.max() < 0.7 * plain.max()
