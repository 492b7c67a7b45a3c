"""python -m index import: items from .npy/.npz files and a JSON-lines sidecar, written in atomic chunks
that running processes follow through the change feed; re-runs resume (no duplicate, no loss), also after
SIGKILL of the importer and a Redis outage mid-import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from index import import_transaction
from index.bulk_import import Chunk, import_chunks, import_files, open_store
from index.bundle import load_bundle
from index.bundle.reader import read_manifest
from index.centers import route
from index.code_space import CodeSpace
from index.engine import HashIndex, Item
from index.errors import GenerationMovedError, IndexInputError, ModalityConflictError, StoreUnavailableError
from index.import_transaction import done_chunks, prepare, write_prepared
from index.rebuild import rebucket
from index.redis_server import RedisServer
from index.store import Group, RedisStore, split
from tests.support.redis_cluster import RedisClusterServer
from tests.support.stored import assert_whole

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "models" / "default"
CODE_BYTES = read_manifest(BUNDLE).code_bits // 8  # a packed code's bytes under the default bundle


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE)


def write_codes(directory: Path, n: int, name: str = "codes", seed: int = 0) -> tuple[Path, np.ndarray]:
    """``n`` random packed codes of the default bundle's length in ``<name>.npy`` and ids ``<name>/<i>`` with
    metadata in ``<name>.jsonl``."""
    codes = np.random.default_rng(seed).integers(0, 256, (n, CODE_BYTES), dtype=np.uint8)
    path = directory / f"{name}.npy"
    np.save(path, codes)
    lines = (json.dumps({"id": f"{name}/{i}", "metadata": {"i": i, "name": name}}) for i in range(n))
    path.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
    return path, codes


def assert_imported(
    server: RedisServer | RedisClusterServer, index_name: str, bundle, name: str, codes: np.ndarray, modality="image"
):
    """Every row of the file stored once, whole, with its code, metadata and the bucket its code routes to."""
    items = assert_whole(server.client(), index_name, bundle.bundle_id)[modality]
    assert len(items) == len(codes)
    store = RedisStore(server.client(), index_name, bundle.bundle_id)
    centers = store.at(store.active_generation()).load_centers()[0]
    buckets = route(codes, centers)[:, 0]
    for i in range(len(codes)):
        item = items[f"{name}/{i}"]
        assert item.code == codes[i].tobytes() and item.metadata == {"i": i, "name": name}
        assert item.bucket == buckets[i]


def test_codes_are_imported_in_chunks_that_a_running_index_follows(any_redis, tmp_path: Path, bundle) -> None:
    index = HashIndex.open(
        any_redis.client(), "import-follow", CodeSpace(bundle.bundle_id, bundle.bits, bundle.centers, "v")
    )
    path, codes = write_codes(tmp_path, 2_500)
    store = open_store(any_redis.client(), "import-follow", bundle)
    summary = import_files(store, bundle, "image", [path], chunk=1_000, progress=False)
    assert (summary.written_chunks, summary.skipped_chunks, summary.written_items) == (3, 0, 2_500)
    assert_imported(any_redis, "import-follow", bundle, "codes", codes)
    assert sum(part.feed.position() for part in store.parts) == 3 * store.shards  # one entry per chunk and shard
    assert index.catch_up() == 3 * store.shards and index.stats()["items"]["image"] == 2_500
    hits = index.search("image", codes[[7]], k=1, probe=None)[0]
    assert hits[0].distance == 0 and hits[0].metadata == {"i": 7, "name": "codes"}


def test_features_are_encoded_with_the_bundle_as_the_service_encodes_them(any_redis, tmp_path: Path, bundle) -> None:
    features = np.random.default_rng(1).normal(size=(300, bundle.input_dim("text"))).astype(np.float32)
    path = tmp_path / "texts.npz"
    np.savez(path, features=features)
    path.with_suffix(".jsonl").write_text(
        "".join(json.dumps({"id": f"texts/{i}", "metadata": {"i": i, "name": "texts"}}) + "\n" for i in range(300))
    )
    store = open_store(any_redis.client(), "import-features", bundle)
    import_files(store, bundle, "text", [path], chunk=128, progress=False)
    assert_imported(any_redis, "import-features", bundle, "texts", bundle.packed_codes("text", features), "text")


def test_a_rerun_skips_the_chunks_done_and_a_changed_file_is_written_again_once(
    any_redis, tmp_path: Path, bundle
) -> None:
    path, codes = write_codes(tmp_path, 1_000)
    store = open_store(any_redis.client(), "import-rerun", bundle)
    first = import_files(store, bundle, "image", [path], chunk=300, progress=False)
    again = import_files(store, bundle, "image", [path], chunk=300, progress=False)
    assert (again.written_chunks, again.skipped_chunks, again.job) == (0, 4, first.job)
    path, codes = write_codes(tmp_path, 1_000, seed=5)  # same ids, new codes: a new job, every item replaced
    changed = import_files(store, bundle, "image", [path], chunk=300, progress=False)
    assert changed.job != first.job and changed.written_items == 1_000
    assert_imported(any_redis, "import-rerun", bundle, "codes", codes)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "has space"}', "line 3: expected"),
        ('{"id": "ends-in-a-newline\\n"}', "line 3: expected"),
        ('{"id": "x", "metadata": [1]}', "line 3: expected"),
        ('{"id": "x", "extra": 1}', "line 3: expected"),
        ("{not json", "line 3: not JSON"),
    ],
)
def test_a_bad_sidecar_line_stops_the_import_naming_it_before_its_chunk(any_redis, tmp_path, bundle, line, message):
    path, _ = write_codes(tmp_path, 6)
    lines = path.with_suffix(".jsonl").read_text().splitlines()
    lines[2] = line
    path.with_suffix(".jsonl").write_text("\n".join(lines) + "\n")
    name = f"import-bad-{abs(hash(line))}"
    store = open_store(any_redis.client(), name, bundle)
    with pytest.raises(IndexInputError, match=message):
        import_files(store, bundle, "image", [path], chunk=4, progress=False)
    assert assert_whole(any_redis.client(), name, bundle.bundle_id)["image"] == {}  # its chunk: nothing


def test_mismatched_inputs_are_refused_with_the_reason(any_redis, tmp_path: Path, bundle) -> None:
    store = open_store(any_redis.client(), "import-refused", bundle)
    path, _ = write_codes(tmp_path, 5)
    path.with_suffix(".jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(IndexInputError, match="fewer lines"):
        import_files(store, bundle, "image", [path], progress=False)
    np.save(path, np.zeros((1, 7), np.uint8))
    with pytest.raises(IndexInputError, match=rf"expected packed codes, uint8 \(n, {CODE_BYTES}\)"):
        import_files(store, bundle, "image", [path], progress=False)
    chunk = Chunk("0", "image", ["a", "a"], np.zeros((2, CODE_BYTES), np.uint8), [b"{}", b"{}"])
    with pytest.raises(IndexInputError, match="an id appears twice"):
        import_chunks(store, "job", [chunk], progress=False)


def _chunk(key: str, prefix: str, n: int, seed: int) -> Chunk:
    codes = np.random.default_rng(seed).integers(0, 256, (n, CODE_BYTES), dtype=np.uint8)
    return Chunk(key, "image", [f"{prefix}/{i}" for i in range(n)], codes, [b'{"i": %d}' % i for i in range(n)])


def test_a_chunk_holding_an_id_of_the_other_modality_is_refused_whole(redis_server, bundle) -> None:
    """One Redis only: over shards a chunk is atomic per shard, and the id's shard alone refuses its part
    (docs/cluster.md)."""
    index = HashIndex.open(
        redis_server.client(), "import-conflict", CodeSpace(bundle.bundle_id, bundle.bits, bundle.centers, "v")
    )
    index.add([Item("taken/3", "text", np.zeros(CODE_BYTES, np.uint8))])
    store = open_store(redis_server.client(), "import-conflict", bundle)
    with pytest.raises(ModalityConflictError, match="taken/3"):
        import_chunks(store, "job", [_chunk("0", "taken", 10, 0)], progress=False)
    assert assert_whole(redis_server.client(), "import-conflict", bundle.bundle_id)["image"] == {}
    assert done_chunks(store, "job") == set()


def test_a_chunk_is_refused_while_the_index_is_re_bucketed(any_redis, bundle) -> None:
    store = open_store(any_redis.client(), "import-rebucket", bundle)
    assert store.set_rebuilding(60)  # as a re-bucket does, on every shard
    with pytest.raises(StoreUnavailableError, match="re-bucketed"):
        import_chunks(store, "job", [_chunk("0", "c", 10, 0)], progress=False)
    assert assert_whole(any_redis.client(), "import-rebucket", bundle.bundle_id)["image"] == {}


@pytest.mark.parametrize("interruptions", [1, 99], ids=["once-then-its-transaction", "always-then-the-script"])
def test_a_write_between_a_chunks_checks_and_its_commit_is_never_overwritten(
    any_redis, bundle, interruptions, monkeypatch
):
    """Another process writing the very ids of a chunk after the chunk's checks aborts its transaction;
    the chunk is checked again (those ids are now replacements) and written whole, by the script when
    writes keep interrupting. Every item ends stored once, as the chunk wrote it. Over shards, each
    shard's part is its own transaction, interrupted alike."""
    name = f"import-race-{interruptions}"
    other = HashIndex.open(any_redis.client(), name, CodeSpace(bundle.bundle_id, bundle.bits, bundle.centers, "v"))
    store = open_store(any_redis.client(), name, bundle)
    checks = import_transaction._watch
    calls: Counter[int] = Counter()  # checks per shard (each shard's part on a thread of its own)

    def interrupted(conn, part, side, ids):
        found = checks(conn, part, side, ids)
        calls[part.shard] += 1
        if calls[part.shard] <= interruptions:
            other.add([Item(ids[calls[part.shard]], "image", np.zeros(CODE_BYTES, np.uint8), {"by": "other"})])
        return found

    monkeypatch.setattr(import_transaction, "_watch", interrupted)
    chunk = _chunk("0", "race", 50, 1)
    summary = import_chunks(store, "job", [chunk], progress=False)
    assert summary.written_items == 50 and calls == dict.fromkeys(range(store.shards), min(interruptions + 1, 3))
    items = assert_whole(any_redis.client(), name, bundle.bundle_id)["image"]
    assert {item: (stored.code, stored.metadata) for item, stored in items.items()} == {
        item: (code.tobytes(), json.loads(meta))
        for item, code, meta in zip(chunk.ids, chunk.codes, chunk.metadata, strict=True)
    }
    other.catch_up()  # the process that wrote in between follows the chunk's feed entry
    assert other.stats()["items"]["image"] == 50
    [top] = other.search("image", chunk.codes[[1]], k=1, probe=None)
    assert (top[0].id, top[0].distance, top[0].metadata) == ("race/1", 0, {"i": 1})


def test_an_import_goes_on_in_the_generation_a_re_bucket_made_routing_by_its_centers(any_redis, bundle):
    """A re-bucket ending mid-import: the chunks after it are routed with the new centers and written to
    the new generation, whole, and the chunks before it were carried over by the re-bucket."""
    name = "import-moved"
    client = any_redis.client()
    store = open_store(client, name, bundle)

    def chunks():
        yield _chunk("0", "a", 50, 0)
        yield _chunk("1", "b", 50, 1)
        while "1" not in done_chunks(store, "job"):  # b written (the reader runs a chunk ahead of the writes)
            time.sleep(0.01)
        rebucket(RedisStore(client, name, bundle.bundle_id), bundle.bits, 16)
        yield _chunk("2", "c", 50, 2)
        yield _chunk("3", "d", 50, 3)

    assert import_chunks(store, "job", chunks(), progress=False).written_items == 200
    items = assert_whole(client, name, bundle.bundle_id)["image"]
    assert len(items) == 200 and store.active_generation() == 1
    centers = store.at(1).load_centers()[0]
    for prefix, seed in (("c", 2), ("d", 3)):
        codes = _chunk("", prefix, 50, seed).codes
        assert [items[f"{prefix}/{i}"].bucket for i in range(50)] == route(codes, centers)[:, 0].tolist()


def test_a_chunk_prepared_for_a_generation_is_written_to_no_other(any_redis, bundle) -> None:
    """Its commands name its generation's keys: once a re-bucket has moved the index on, the chunk is
    refused by the old generation's store and by the new one's alike, and nothing of it is written."""
    name = "import-prepared-moved"
    client = any_redis.client()
    store = open_store(client, name, bundle)
    import_chunks(store, "job", [_chunk("0", "a", 50, 0)], progress=False)
    chunk = _chunk("1", "b", 50, 1)
    buckets = route(chunk.codes, store.load_centers()[0])[:, 0]
    [(shard, part), *_] = split(Group("image", chunk.ids, buckets, chunk.codes, chunk.metadata), store.shards)
    prepared = prepare(store.parts[shard], part)
    rebucket(RedisStore(client, name, bundle.bundle_id), bundle.bits, 16)
    for writer in (store, store.at(store.active_generation())):
        with pytest.raises(GenerationMovedError):
            write_prepared(writer.parts[shard], prepared, "job", chunk.key, 100)
    assert set(assert_whole(client, name, bundle.bundle_id)["image"]) == {f"a/{i}" for i in range(50)}


def _importer(server: RedisServer, path: Path, chunk: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "index", "import", str(path), "--modality", "image", "--chunk", str(chunk),
               "--redis-url", server.url, "--index", "faulty", "--bundle", str(BUNDLE), "--no-progress"]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_chunks(server: RedisServer, bundle, count: int, process: subprocess.Popen) -> set[str]:
    """The job's done chunks once at least ``count`` are written (the importer still running)."""
    store = RedisStore(server.client(), "faulty", bundle.bundle_id)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        jobs = server.client().keys(store.bundle_keys.import_progress("*"))
        done = {c.decode() for c in server.client().hkeys(jobs[0])} if jobs else set()
        if len(done) >= count:
            return done
        time.sleep(0.005)
    raise AssertionError("the importer wrote too few chunks")


N_FAULT = 200_000  # items of the fault tests' file: chunks of 1,000, so a fault lands mid-import


def _import_under_way(server: RedisServer, tmp_path: Path, bundle) -> tuple[Path, np.ndarray, subprocess.Popen]:
    """The fault tests' file, and an importer of it in chunks of 1,000 that has written at least 5."""
    path, codes = write_codes(tmp_path, N_FAULT)
    importer = _importer(server, path, 1_000)
    _wait_for_chunks(server, bundle, 5, importer)
    return path, codes, importer


def _rerun(server: RedisServer, path: Path) -> dict:
    """The same import run again to its end: its summary."""
    rerun = _importer(server, path, 1_000)
    out, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    return json.loads(out)


def test_sigkill_of_the_importer_mid_import_then_a_rerun_stores_every_item_once(tmp_path: Path, bundle) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        path, codes, importer = _import_under_way(server, tmp_path, bundle)
        os.kill(importer.pid, signal.SIGKILL)
        importer.wait()
        items = assert_whole(server.client(), "faulty", bundle.bundle_id)["image"]
        jobs = server.client().keys(
            RedisStore(server.client(), "faulty", bundle.bundle_id).bundle_keys.import_progress("*")
        )
        done = server.client().hlen(jobs[0])
        assert 5 <= done < N_FAULT // 1_000 and len(items) == 1_000 * done  # whole chunks only, each marked
        summary = _rerun(server, path)
        assert summary["skipped_chunks"] == done and summary["written_items"] == N_FAULT - 1_000 * done
        assert_imported(server, "faulty", bundle, "codes", codes)
    finally:
        server.stop()


def test_a_redis_outage_stops_the_import_with_a_clear_message_and_a_rerun_completes(tmp_path: Path, bundle) -> None:
    server = RedisServer(tmp_path / "redis").start()
    try:
        path, codes, importer = _import_under_way(server, tmp_path, bundle)
        server.stop()  # Redis goes away mid-import
        _, err = importer.communicate(timeout=120)
        assert importer.returncode == 1 and "import stopped: Redis is unreachable" in err, err
        assert "run the same command again to resume" in err
        server.start()  # same port and directory: the AOF is replayed
        assert _rerun(server, path)["skipped_chunks"] >= 5
        assert_imported(server, "faulty", bundle, "codes", codes)
    finally:
        server.stop()
