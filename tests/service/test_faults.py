"""Faults and attacks against real processes: the service (``python -m service``) and redis-server,
each started by the test on free loopback ports, and the app in process where a process adds nothing.

Faults: SIGKILL of the service mid-ingest; Redis stopped while serving; Redis SIGKILLed and replayed
from its AOF; a tampered model bundle at start-up and through the hot swap; searches hammered during
hot swaps. Attacks: writes without the key, demo mode asked to bind elsewhere, oversized bodies
(declared and chunked), oversized images and decompression bombs, pickle/eval in the code, CORS.
Results and numbers: docs/reliability.md.
"""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import random
import signal
import socket
import struct
import threading
import time
import uuid
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin
from pydantic import ValidationError

from index.bundle import load_bundle
from index.bundle.featurizers import PILLOW_MAX_PIXELS
from index.redis_server import RedisServer
from index.store import RedisStore
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings
from tests.support.faults_bundles import copy_bundle, flip_byte, models_dir, wrong_input_shape
from tests.support.faults_service import KEY, ROOT, Service
from tests.support.ingest_client import BATCH, DIMS, Stream, batch_items


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


def expected_code(bundle, item: dict) -> str:
    x = np.asarray(item["features"], dtype=np.float32)[None]
    return bundle.packed_codes(item["modality"], x)[0].tobytes().hex()


def present(service: Service, n: int) -> list[bool]:
    """Which items of batch n the service returns by id."""
    found = []
    for item in batch_items(n):
        reply = service.call("GET", f"/v1/items/{item['id']}")
        assert reply.status in (200, 404), (item["id"], reply.status, reply.body)
        found.append(reply.status == 200)
    return found


def assert_stored_whole(service: Service, bundle, n: int) -> None:
    """Every item of batch n is stored with its own code and metadata, and found by search."""
    for item in batch_items(n):
        reply = service.call("GET", f"/v1/items/{item['id']}")
        assert reply.status == 200, (item["id"], reply.status, reply.body)
        assert reply.body["modality"] == item["modality"] and reply.body["metadata"] == item["metadata"]
        assert reply.body["code_hex"] == expected_code(bundle, item), item["id"]
    for item in batch_items(n)[:2]:  # one image, one text: in the in-memory index, found by a search
        source = "text" if item["modality"] == "image" else "image"
        query = {"features": [0.0] * (DIMS[source] - 1) + [1.0], "k": 1, "probe": "all"}
        query["filter"] = {"metadata": item["metadata"]}
        path = "/v1/search/text-to-image" if source == "text" else "/v1/search/image-to-text"
        reply = service.call("POST", path, query)
        assert reply.status == 200 and [h["id"] for h in reply.body["results"]] == [item["id"]], reply.body


def index_items(service: Service) -> dict[str, int]:
    return service.call("GET", "/v1/models").body["index"]["items"]


def redis_items(redis: RedisServer, index_name: str, bundle_id: str) -> dict[str, int]:
    store = RedisStore(redis.client(), index_name, bundle_id)
    store = store.at(store.active_generation())
    return {m: store.client.hlen(store.keys.items[m]) for m in ("image", "text")}


@pytest.fixture
def redis(tmp_path: Path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


# --- Faults ------------------------------------------------------------------------------------


def test_sigkill_of_the_service_mid_ingest_keeps_every_acknowledged_batch_and_no_half_batch(
    tmp_path: Path, redis: RedisServer, bundle
) -> None:
    service = Service(redis.url, tmp_path).start()
    stream = Stream(service.port)
    try:
        stream.start()
        stream.wait_acked(30)
        assert stream.in_flight.wait(10)  # kill while a batch is on its way or being stored
        time.sleep(random.uniform(0, 0.01))
        service.kill()
    finally:
        stream.stop()
        service.kill()
    unacknowledged = sorted(stream.failed)
    assert len(stream.acked) >= 30 and unacknowledged, (stream.acked, stream.failed)

    restarted = Service(redis.url, tmp_path).start()
    try:
        for n in stream.acked:
            assert_stored_whole(restarted, bundle, n)
        found = {n: present(restarted, n) for n in unacknowledged}
        landed = [n for n, f in found.items() if all(f)]
        halves = {n: f for n, f in found.items() if any(f) and not all(f)}
        acked = f"{len(stream.acked)} batches acknowledged ({len(stream.acked) * BATCH} items), all recovered"
        print(f"\nSIGKILL service: {acked}; unacknowledged {unacknowledged}, whole: {landed}, half: {halves}")
        assert not halves, f"unacknowledged batches half present (item j of the batch: stored?): {halves}"
        per_modality = BATCH // 2 * (len(stream.acked) + len(landed))
        assert index_items(restarted) == {"image": per_modality, "text": per_modality}
    finally:
        restarted.stop()


def test_redis_down_searches_and_writes_503_and_recovery_without_restart(
    tmp_path: Path, redis: RedisServer, bundle
) -> None:
    service = Service(redis.url, tmp_path).start()
    try:
        for n in range(3):
            assert service.call("POST", "/v1/items:batch", {"items": batch_items(n)}, key=KEY).status == 200
        text_query = {"features": batch_items(0)[1]["features"], "k": 5, "probe": "all"}
        image_query = {"features": batch_items(0)[0]["features"], "k": 5, "probe": "all"}
        before = service.call("POST", "/v1/search/text-to-image", text_query).body["results"]
        assert len(before) == 5

        redis.stop()  # Redis goes away while the service keeps running
        down = {
            "t2i": service.call("POST", "/v1/search/text-to-image", text_query),
            "i2t": service.call("POST", "/v1/search/image-to-text", image_query),
            "batch": service.call("POST", "/v1/items:batch", {"items": batch_items(10)}, key=KEY),
            "delete": service.call("DELETE", "/v1/items/b0/0", key=KEY),
            "readyz": service.call("GET", "/readyz"),
            "healthz": service.call("GET", "/healthz"),
            "get": service.call("GET", "/v1/items/b0/0"),
        }
        observed = {name: reply.status for name, reply in down.items()}
        print(f"\nRedis down: {observed}; batch: {down['batch'].body}; readyz: {down['readyz'].body}")
        # Writes refuse with a clear JSON body; readiness says Redis is unreachable.
        assert down["batch"].status == 503 and "Redis" in down["batch"].body["detail"], down["batch"]
        assert down["delete"].status == 503 and "Redis" in down["delete"].body["detail"], down["delete"]
        assert down["readyz"].status == 503 and down["readyz"].body["redis"] == "unreachable"
        assert down["healthz"].status == 200
        # Searches rank in memory but read their results' ids and metadata from Redis: a 503 that says so.
        assert down["t2i"].status == 503 and "Redis" in down["t2i"].body["detail"], down["t2i"]
        assert down["i2t"].status == 503 and "Redis" in down["i2t"].body["detail"], down["i2t"]

        redis.start()  # same port, same directory: the AOF is replayed
        deadline = time.monotonic() + 30
        while service.call("GET", "/readyz").status != 200:
            assert time.monotonic() < deadline, "the service did not see Redis come back"
            time.sleep(0.2)
        assert service.process.poll() is None  # recovered without a restart
        assert service.call("POST", "/v1/search/text-to-image", text_query).body["results"] == before
        assert service.call("POST", "/v1/items:batch", {"items": batch_items(10)}, key=KEY).status == 200
        assert service.call("DELETE", "/v1/items/b0/0", key=KEY).status == 204
        assert_stored_whole(service, bundle, 10)
        assert_stored_whole(service, bundle, 1)
    finally:
        service.stop()


def test_redis_sigkill_and_aof_replay_lose_no_acknowledged_batch(tmp_path: Path, redis: RedisServer, bundle) -> None:
    # The embedded/test server and docker-compose.yml (tests/test_deploy.py) both run appendfsync always.
    config = redis.client().config_get("append*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "always", config
    service = Service(redis.url, tmp_path, index_name="aof").start()
    stream = Stream(service.port)
    try:
        stream.start()
        stream.wait_acked(20)
        os.kill(redis.process.pid, signal.SIGKILL)  # no shutdown, no final AOF flush
        redis.process.wait()
        redis.process = None
        time.sleep(1.0)  # writes and searches meanwhile are refused (503)
        redis.start()  # same directory and port: Redis replays its AOF
        stream.wait_acked(len(stream.acked) + 20)
    finally:
        stream.stop()
    try:
        for n in stream.acked:
            assert_stored_whole(service, bundle, n)
        halves = {n: present(service, n) for n in stream.failed}
        assert all(not any(f) or all(f) for f in halves.values()), f"half-present batches: {halves}"
        landed = sorted(n for n, f in halves.items() if all(f))
        in_redis = redis_items(redis, "aof", bundle.bundle_id)
        in_memory = index_items(service)
        print(f"\nRedis SIGKILL + AOF: {len(stream.acked)} batches acknowledged ({len(stream.acked) * BATCH} items), "
              f"all recovered; refused while down: {sorted(stream.failed)}; stored although refused: {landed}; "
              f"items in Redis {in_redis}, in the service's memory {in_memory}")  # fmt: skip
        assert in_redis["image"] >= BATCH // 2 * len(stream.acked)
    finally:
        service.stop()
    restarted = Service(redis.url, tmp_path, index_name="aof").start()  # memory rebuilt from Redis
    try:
        assert index_items(restarted) == redis_items(redis, "aof", bundle.bundle_id)
        for n in stream.acked[::5]:
            assert_stored_whole(restarted, bundle, n)
    finally:
        restarted.stop()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (flip_byte, "sha256 of text.onnx does not match the manifest: the bundle was modified"),
        (wrong_input_shape, "text.onnx takes ['batch', 383], manifest says ['batch', 384]"),
    ],
    ids=["byte-changed", "wrong-input-shape-resealed"],
)
def test_a_tampered_bundle_stops_the_service_at_start_up(tmp_path: Path, redis: RedisServer, tamper, message) -> None:
    bad = tamper(copy_bundle(tmp_path / "bundle"))
    service = Service(redis.url, tmp_path, env={"XMHASH_BUNDLE_PATH": str(bad)}).start(wait=False)
    try:
        code = service.wait_exit(120)
    finally:
        service.kill()
    assert code != 0 and message in service.output(), service.output()[-3000:]


# --- Hot swap ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def swap_service(tmp_path_factory: pytest.TempPathFactory):
    """One service on the default bundle with a models directory of good and bad bundles."""
    root = tmp_path_factory.mktemp("swap")
    models = models_dir(root)
    flip_byte(copy_bundle(models / "tampered"))
    wrong_input_shape(copy_bundle(models / "wrongshape"))
    malformed = copy_bundle(models / "malformed")
    (malformed / "manifest.json").write_text(json.dumps({"format_version": 1}))
    (models / "empty").mkdir()
    server = RedisServer(root / "redis").start()
    env = {"XMHASH_MODELS_DIR": str(models), "XMHASH_BUNDLE_PATH": str(models / "default")}
    service = Service(server.url, root, index_name="swap", env=env).start()
    yield service
    service.stop()
    server.stop()


def swap(service: Service, name, key: str | None = KEY, force: bool = False):
    body = {"bundle": name} | ({"force": True} if force else {})
    return service.call("POST", "/v1/models:swap", body, key=key, timeout=120)


@pytest.mark.parametrize(
    ("name", "status", "message"),
    [
        ("tampered", 422, "sha256 of text.onnx does not match the manifest"),
        ("wrongshape", 422, "text.onnx takes ['batch', 383], manifest says ['batch', 384]"),
        ("malformed", 422, "manifest.json is malformed: missing or wrong field 'modalities'"),
        ("empty", 422, "manifest.json is missing"),
        ("absent", 404, "no bundle 'absent' in the models directory"),
        ("../models/default", 422, "String should match pattern"),
        ("default/..", 422, "String should match pattern"),
        ("..", 422, "String should match pattern"),
        ("a..b", 422, "String should match pattern"),
        ("/etc", 422, "String should match pattern"),
        ("", 422, "at least 1 character"),
        (7, 422, "valid string"),
    ],
)
def test_a_refused_swap_is_a_422_and_the_previous_model_keeps_serving(swap_service, name, status, message) -> None:
    before = swap_service.call("GET", "/v1/models").body["bundle_id"]
    reply = swap(swap_service, name)
    assert reply.status == status and message in json.dumps(reply.body), reply.body
    assert swap_service.call("GET", "/v1/models").body["bundle_id"] == before
    query = {"features": batch_items(0)[1]["features"], "k": 3}
    search = swap_service.call("POST", "/v1/search/text-to-image", query)
    assert search.status == 200 and search.body["bundle_id"] == before


def test_swap_needs_the_api_key(swap_service) -> None:
    assert swap(swap_service, "linear32", key=None).status == 403
    assert swap(swap_service, "linear32", key="wrong").status == 403
    assert swap_service.call("GET", "/v1/models").body["method"] == "dsfh-instance"


def test_a_forced_swap_serves_the_new_bundles_own_index_and_keeps_the_old_one_in_step(swap_service, bundle) -> None:
    default_id = bundle.bundle_id
    assert swap(swap_service, "default").status == 200
    assert swap_service.call("POST", "/v1/items:batch", {"items": batch_items(100)}, key=KEY).status == 200
    refused = swap(swap_service, "linear32")
    assert refused.status == 409 and "POST /v1/models:prepare first" in refused.body["detail"]
    reply = swap(swap_service, "linear32", force=True)
    assert reply.status == 200, reply.body
    assert reply.body | {"load_ms": 0} == {
        "bundle_id": "linear32s0", "previous_bundle_id": default_id, "method": "linear-test", "code_bits": 32,
        "items": {"image": 0, "text": 0}, "load_ms": 0, "gate": None, "gate_note": "forced",
    }  # fmt: skip
    models = swap_service.call("GET", "/v1/models").body
    assert (models["bundle_id"], models["code_bits"], models["method"]) == ("linear32s0", 32, "linear-test")
    assert models["index"]["items"] == {"image": 0, "text": 0} and models["index"]["buckets"] == 8
    # Items are namespaced by bundle id: the default bundle's items are not in this index.
    assert swap_service.call("GET", "/v1/items/b100/0").status == 404
    assert swap_service.call("POST", "/v1/items:batch", {"items": batch_items(101)}, key=KEY).status == 200
    stored = swap_service.call("GET", "/v1/items/b101/0").body
    assert len(stored["code_hex"]) == 8  # 32-bit codes
    search = swap_service.call("POST", "/v1/search/text-to-image", {"features": batch_items(0)[1]["features"]})
    assert search.body["bundle_id"] == "linear32s0" and {h["id"] for h in search.body["results"]} <= {
        f"b101/{j}" for j in range(0, BATCH, 2)
    }
    # The previous bundle is kept for rollback and written to: swapping back finds both batches.
    assert swap_service.call("GET", "/v1/models:rollout").body["other"] == default_id
    reply = swap(swap_service, "default")
    assert reply.status == 200 and reply.body["bundle_id"] == default_id
    assert reply.body["gate_note"] == "rollback: no gate"
    assert reply.body["items"]["image"] >= BATCH
    assert swap_service.call("GET", "/v1/items/b100/0").status == 200
    assert len(swap_service.call("GET", "/v1/items/b101/0").body["code_hex"]) == 2 * bundle.bits // 8


def test_searches_and_ingests_never_fail_while_models_swap(swap_service, bundle) -> None:
    """Threads hammer searches (feature and raw-text queries) and ingests while the main thread swaps
    between a 64-bit and a 32-bit bundle: a request that mixed one model's encoder with the other's
    index would fail (codes of the wrong length), so every answer must be a 200."""
    statuses: Counter[tuple[str, int]] = Counter()
    bundles: Counter[str] = Counter()
    halt = threading.Event()
    queries = {
        "t2i-features": ("/v1/search/text-to-image", {"features": batch_items(0)[1]["features"], "k": 10}),
        "t2i-text": ("/v1/search/text-to-image", {"text": "red apple fruit", "k": 10}),
        "i2t-features": ("/v1/search/image-to-text", {"features": batch_items(0)[0]["features"], "k": 10}),
    }

    def hammer(name: str) -> None:
        n = 1000
        while not halt.is_set():
            if name == "ingest":
                n += 1
                reply = swap_service.call("POST", "/v1/items:batch", {"items": batch_items(n)}, key=KEY)
            else:
                reply = swap_service.call("POST", *queries[name])
                if reply.status == 200:
                    bundles[reply.body["bundle_id"]] += 1
            statuses[(name, reply.status)] += 1
            if reply.status != 200:
                statuses[(f"{name}: {reply.body}", 0)] += 1

    threads = [threading.Thread(target=hammer, args=(name,), daemon=True) for name in [*queries, "ingest"]]
    for thread in threads:
        thread.start()
    swaps = []
    try:
        for name in ["linear32", "default"] * 3:
            time.sleep(0.3)
            reply = swap(swap_service, name, force=True)
            swaps.append((name, reply.status, round(reply.body.get("load_ms", 0))))
        time.sleep(0.3)
    finally:
        halt.set()
        for thread in threads:
            thread.join(60)
    print(f"\nswaps {swaps}; requests {dict(statuses)}; answered by {dict(bundles)}")
    assert all(status == 200 for _, status, _ in swaps), swaps
    assert all(status == 200 for (_, status) in statuses), statuses
    assert set(bundles) == {bundle.bundle_id, "linear32s0"}, bundles
    assert swap_service.call("GET", "/v1/models").body["bundle_id"] == bundle.bundle_id


# --- Attacks -------------------------------------------------------------------------------------


def _app(server, **overrides) -> TestClient:
    settings = {"redis_url": server.url, "index_name": uuid.uuid4().hex, "api_key": "secret-key"}
    return TestClient(create_app(Settings(**(settings | overrides))))


def test_every_write_needs_the_key_compared_in_constant_time(any_redis, monkeypatch) -> None:
    import service.runtime

    compared = []
    original = service.runtime.secrets.compare_digest

    def recording(a, b):
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(service.runtime.secrets, "compare_digest", recording)
    writes = [
        ("POST", "/v1/items:batch", {"items": [{"id": "a", "modality": "text", "text": "apple"}]}),
        ("DELETE", "/v1/items/a", None),
        ("POST", "/v1/models:swap", {"bundle": "default"}),
    ]
    with _app(any_redis) as client:
        for method, path, body in writes:
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": "secret-ke"}, {"X-API-Key": "secret-key "}):
                reply = client.request(method, path, json=body, headers=headers)
                assert reply.status_code == 403 and "X-API-Key" in reply.json()["detail"], (path, headers)
        assert len(compared) == 3 * 3  # every presented key went through secrets.compare_digest
        reply = client.post("/v1/items:batch", json=writes[0][2], headers={"X-API-Key": "secret-key"})
        assert reply.status_code == 200
    with _app(any_redis, api_key=None) as client:  # no key configured: no writes at all
        reply = client.post("/v1/items:batch", json=writes[0][2], headers={"X-API-Key": ""})
        assert reply.status_code == 403 and "no XMHASH_API_KEY configured" in reply.json()["detail"]


@pytest.mark.parametrize(
    ("args", "env"),
    [(("--demo", "--host", "0.0.0.0"), {}), ((), {"XMHASH_DEMO": "true", "XMHASH_HOST": "0.0.0.0"})],
    ids=["cli-host", "env-host"],
)
def test_demo_mode_binds_to_loopback_whatever_host_is_asked(tmp_path: Path, redis: RedisServer, args, env) -> None:
    """Demo mode opens writes to everyone, so it must listen on 127.0.0.1 only (``OPENCLIPART_ROOT``
    points nowhere so that the demo's background ingestion stops at once)."""
    env = env | {"OPENCLIPART_ROOT": str(tmp_path / "no-openclipart")}
    service = Service(redis.url, tmp_path, api_key=None, env=env, args=args).start()
    try:
        assert f"serving on http://127.0.0.1:{service.port}" in service.output()
        assert service.call("POST", "/v1/items:batch", {"items": batch_items(0)}).status == 200  # writes open
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", service.port), timeout=2):
            pass  # not listening on any other address (127.0.0.2 reaches a 0.0.0.0 listener)
    finally:
        service.stop()


def test_request_bodies_over_the_limit_are_413_declared_or_chunked(any_redis) -> None:
    with _app(any_redis, max_request_bytes=20_000) as client:
        big = json.dumps({"text": "apple " * 5000}).encode()
        json_headers = {"content-type": "application/json"}
        declared = client.post("/v1/search/text-to-image", content=big, headers=json_headers)
        assert declared.status_code == 413 and "larger than 20000 bytes" in declared.json()["detail"]

        def chunks(data: bytes):  # no Content-Length: Transfer-Encoding chunked
            for start in range(0, len(data), 4096):
                yield data[start : start + 4096]

        chunked = client.post("/v1/search/text-to-image", content=chunks(big), headers=json_headers)
        assert chunked.request.headers.get("transfer-encoding") == "chunked"
        assert chunked.status_code == 413 and "larger than 20000 bytes" in chunked.json()["detail"]
        batch = json.dumps({"items": [{"id": "x", "modality": "text", "text": "apple " * 5000}]}).encode()
        reply = client.post(
            "/v1/items:batch", content=chunks(batch), headers=json_headers | {"X-API-Key": "secret-key"}
        )
        assert reply.status_code == 413
        multipart = b"--b\r\ncontent-disposition: form-data; name=image; filename=x.png\r\n\r\n" + b"0" * 30_000
        upload = client.post(
            "/v1/search/image-to-text/upload",
            content=chunks(multipart + b"\r\n--b--\r\n"),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert upload.status_code == 413
        small = client.post("/v1/search/text-to-image", content=chunks(b'{"text": "apple"}'), headers=json_headers)
        assert small.status_code == 200, small.text


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width × height pixels, with a few bytes of image data: a
    decompression bomb's shape (decoding it would allocate width × height × 4 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_image_size_limits_and_decompression_bombs_are_refused_before_decoding(any_redis, monkeypatch) -> None:
    decoded = []
    original_load = PngImagePlugin.PngImageFile.load

    def recording_load(self):
        decoded.append(self.size)
        return original_load(self)

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", recording_load)
    with _app(any_redis, max_image_bytes=50_000) as client:
        for width, height in [(100_000, 100_000), (8_000, 8_000), (2**31 - 1, 1)]:
            bomb = _png_header_only(width, height)
            started = time.perf_counter()
            upload = client.post("/v1/search/image-to-text/upload", files={"image": ("bomb.png", bomb)})
            as_json = client.post("/v1/search/image-to-text", json={"image_base64": base64.b64encode(bomb).decode()})
            item = {"id": "bomb", "modality": "image", "image_base64": base64.b64encode(bomb).decode()}
            ingest = client.post("/v1/items:batch", json={"items": [item]}, headers={"X-API-Key": "secret-key"})
            assert time.perf_counter() - started < 5
            for reply in (upload, as_json):
                assert reply.status_code == 422, reply.text
                assert "exceeds" in reply.text or "decompression bomb" in reply.text, reply.text
            assert ingest.status_code == 200 and ingest.json()["rejected"] == 1, ingest.text
        assert decoded == []  # no pixel of a bomb was decoded
        too_big = client.post("/v1/search/image-to-text/upload", files={"image": ("x.png", b"\x89PNG" + bytes(60_000))})
        assert too_big.status_code == 422 and "larger than 50000 bytes" in too_big.text
        fine = client.post("/v1/search/image-to-text/upload", files={"image": ("ok.png", _png((32, 32)))})
        assert fine.status_code == 200 and set(decoded) == {(32, 32)}  # and a real image is decoded


@pytest.mark.parametrize(
    ("width", "height", "limit", "message"),
    [
        (10_000, 10_000, 50_000_000, "image of 10000×10000 pixels exceeds the limit of 50000000 pixels"),
        (20_000, 20_000, 50_000_000, "image exceeds the limit of 50000000 pixels"),  # beyond Pillow's own limit too
        (20_000, 20_000, 1_000_000, "image exceeds the limit of 1000000 pixels"),
    ],
)
def test_an_image_over_the_pixel_limit_is_refused_naming_the_configured_limit(
    any_redis, width, height, limit, message
) -> None:
    """The configured ``max_image_pixels`` is the limit applied and named, also for an image Pillow itself
    refuses to open (4·10⁸ pixels: Pillow's error would name its own limit, 178956970)."""
    bomb = _png_header_only(width, height)
    item = {"id": "big", "modality": "image", "image_base64": base64.b64encode(bomb).decode()}
    with _app(any_redis, max_image_pixels=limit) as client:
        upload = client.post("/v1/search/image-to-image/upload", files={"image": ("big.png", bomb)})
        as_json = client.post("/v1/search/image-to-image", json={"image_base64": item["image_base64"]})
        ingest = client.post("/v1/items:batch", json={"items": [item]}, headers={"X-API-Key": "secret-key"})
    for reply in (upload, as_json):
        assert reply.status_code == 422 and reply.json()["detail"] == f"not a usable image: {message}"
    assert ingest.json()["results"][0]["error"] == f"not a usable image: {message}"


def test_the_pixel_limit_cannot_be_set_above_what_pillow_opens() -> None:
    assert Settings(max_image_pixels=PILLOW_MAX_PIXELS).max_image_pixels == 178_956_970
    with pytest.raises(ValidationError, match="less than or equal to 178956970"):
        Settings(max_image_pixels=PILLOW_MAX_PIXELS + 1)


FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _unsafe_calls(path: Path) -> list[str]:
    """pickle-like imports, eval/exec, np.load/torch.load allowing pickles, yaml.load without SafeLoader."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
            found.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "__import__"):
                found.append(f"{where} {name}(")
            pickled = keywords.get("allow_pickle")
            if pickled is not None and not (isinstance(pickled, ast.Constant) and pickled.value is False):
                found.append(f"{where} {name}(allow_pickle=…)")
            if name == "torch.load" and not (
                isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
            ):
                found.append(f"{where} torch.load without weights_only=True")
            if name == "yaml.load" and "SafeLoader" not in ast.unparse(node):
                found.append(f"{where} yaml.load without SafeLoader")
    return found


def test_no_pickle_eval_or_exec_of_untrusted_data_outside_tests(tmp_path: Path) -> None:
    sources = [
        p for p in ROOT.rglob("*.py") if not {".venv", "var", "tests", "build", ".git"} & set(p.relative_to(ROOT).parts)
    ]
    assert len(sources) > 40
    found = [hit for path in sources for hit in _unsafe_calls(path)]
    assert found == [], found
    probe = tmp_path / "probe.py"  # the scanner does find what it looks for
    probe.write_text("import pickle\neval('1')\nimport numpy as np\nnp.load('x', allow_pickle=True)\nnet.eval()\n")
    assert len(_unsafe_calls(probe)) == 3


def test_redis_started_by_the_service_listens_on_loopback_only_with_appendfsync_always(tmp_path: Path) -> None:
    """The embedded/test redis-server (index/redis_server.py). docker-compose's Redis publishes no port
    and runs appendfsync always: tests/test_deploy.py checks that."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        config = server.client().config_get("*")
        assert config["bind"] == "127.0.0.1" and config["protected-mode"] == "yes"
        assert config["appendonly"] == "yes" and config["appendfsync"] == "always" and config["save"] == ""
        with pytest.raises(OSError), socket.create_connection(("127.0.0.2", server.port), timeout=2):
            pass
    finally:
        server.stop()


def test_cors_is_off_unless_origins_are_configured(any_redis) -> None:
    cross_origin = {"Origin": "https://evil.example"}
    preflight = cross_origin | {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "X-API-Key"}
    with _app(any_redis) as client:
        assert "access-control-allow-origin" not in client.get("/healthz", headers=cross_origin).headers
        reply = client.post("/v1/search/text-to-image", json={"text": "apple"}, headers=cross_origin)
        assert "access-control-allow-origin" not in reply.headers
        options = client.options("/v1/items:batch", headers=preflight)
        assert options.status_code >= 400 and "access-control-allow-origin" not in options.headers
    with _app(any_redis, cors_origins=["https://app.example"]) as client:
        allowed = client.get("/healthz", headers={"Origin": "https://app.example"})
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "access-control-allow-origin" not in client.get("/healthz", headers=cross_origin).headers
