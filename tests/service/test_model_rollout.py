"""Changing the model without losing the corpus: a bundle is prepared beside the live index while searches
and writes go on, swapped in once complete and no worse on the held-out set, rolled back; a worse bundle
is refused with its table; a killed pass is resumed; a new default bundle fills its index by itself.

Real services (``python -m service`` processes) on a real redis-server, over a small OpenClipart
collection that carries its split (its ``query`` rows are the gate's held-out set).
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from index.bundle import load_bundle
from index.codes import pack_signs, to_signs
from index.redis_server import RedisServer
from tests.support.faults_bundles import copy_bundle, linear_bundle, permuted_bundle
from tests.support.faults_service import KEY, Service
from training.datasets import openclipart

QUERY_ROWS, DATABASE_ROWS = 40, 40
TEXTS = {"api/t1": "a red apple on a branch", "api/t2": "an acoustic guitar", "api/t3": "a black cat sitting"}
FEATURE_ITEMS = 2


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QUERY_ROWS held-out and DATABASE_ROWS other OpenClipart rows, exported with their split; and the
    PNG bytes of two pictures outside it (sent through the API)."""
    dataset = openclipart.load_openclipart()
    rng = np.random.default_rng(0)
    query = rng.choice(dataset.split.query, QUERY_ROWS, replace=False)
    database = rng.choice(dataset.split.database, DATABASE_ROWS + 2, replace=False)
    out = tmp_path_factory.mktemp("rollout-corpus")
    manifest, _ = openclipart.export_collection(out, only={dataset.ids[i] for i in [*query, *database[2:]]})
    for n, i in enumerate(database[:2]):
        (out / f"upload{n}.png").write_bytes((openclipart.DEFAULT_ROOT / "png" / f"{dataset.ids[i]}.png").read_bytes())
    return manifest


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """default; permuted (the same codes with their bits in another order: as good, every code new);
    random (random linear hash functions: a deliberately degraded bundle)."""
    root = tmp_path_factory.mktemp("rollout-models")
    copy_bundle(root / "default")
    permuted_bundle(root / "permuted")
    linear_bundle(root / "random", bits=64, n_centers=8)
    return root


def _service(redis_url: str, root: Path, models: Path, corpus: Path, bundle: str = "default") -> Service:
    env = {
        "XMHASH_MODELS_DIR": str(models),
        "XMHASH_BUNDLE_PATH": str(models / bundle),
        "XMHASH_DEMO_CORPUS": "true",
        "XMHASH_DEMO_COLLECTION": str(corpus),
        "XMHASH_REFRESH_SECONDS": "0.2",
        "XMHASH_ROLLOUT_CHUNK": "16",
        "XMHASH_ROLLOUT_LEASE_SECONDS": "3",
    }
    return Service(redis_url, root, index_name=f"rollout-{root.name}", env=env).start()  # one index a test


def _wait(service: Service, path: str, done, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = service.call("GET", path)
        if reply.status == 200 and done(reply.body):
            return reply.body
        time.sleep(0.1)
    raise TimeoutError(f"{path}: {reply.body}")


def _demo_loaded(service: Service) -> None:
    _wait(service, "/readyz", lambda body: body["demo_corpus"]["state"] == "done")


def _api_items(corpus: Path) -> list[dict]:
    """Raw texts, raw images and feature vectors (of the image featurizer's space), as users send them."""
    items = [{"id": i, "modality": "text", "text": text} for i, text in TEXTS.items()]
    for n in range(2):
        png = (corpus.parent / f"upload{n}.png").read_bytes()
        items.append({"id": f"api/img{n}", "modality": "image", "image_base64": base64.b64encode(png).decode()})
    rng = np.random.default_rng(5)
    for n in range(FEATURE_ITEMS):
        items.append({"id": f"api/f{n}", "modality": "image", "features": rng.normal(size=1280).tolist()})
    return items


def _expected_codes(bundle_dir: Path, corpus: Path) -> dict[str, str]:
    """The code each API item must have under a bundle: hashed from what the service kept of it (texts as
    they are, image features as float16)."""
    bundle = load_bundle(bundle_dir, threads=1)
    items = _api_items(corpus)
    codes = {}
    texts = [item for item in items if "text" in item]
    for item, code in zip(
        texts, bundle.packed_codes("text", bundle.text_features([i["text"] for i in texts])), strict=True
    ):
        codes[item["id"]] = code.tobytes().hex()
    for item in items:
        if item["modality"] != "image":
            continue
        if "features" in item:
            x = np.asarray(item["features"], dtype=np.float32)[None]
        else:
            x = bundle.image_features(bundle.decode_image(base64.b64decode(item["image_base64"]))[None])
        kept = x.astype(np.float16).astype(np.float32)
        codes[item["id"]] = pack_signs(to_signs(bundle.real_codes("image", kept)))[0].tobytes().hex()
    return codes


class Load:
    """Searches and raw-text writes on threads until stopped, every answer counted by status."""

    def __init__(self, service: Service) -> None:
        self.service, self.statuses, self.written = service, Counter(), []
        self.halt = threading.Event()
        self.threads = [
            threading.Thread(target=self._search, daemon=True),
            threading.Thread(target=self._write, daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.halt.set()
        for thread in self.threads:
            thread.join(60)

    def _search(self) -> None:
        while not self.halt.is_set():
            reply = self.service.call("POST", "/v1/search/text-to-image", {"text": "fruit", "k": 5})
            self.statuses[("search", reply.status)] += 1

    def _write(self) -> None:
        n = 0
        while not self.halt.is_set():
            item = {"id": f"live/{n}", "modality": "text", "text": f"a drawing number {n}"}
            reply = self.service.call("POST", "/v1/items:batch", {"items": [item]}, key=KEY)
            self.statuses[("write", reply.status)] += 1
            if reply.status == 200:
                self.written.append(item["id"])
            n += 1
            time.sleep(0.02)


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A redis-server of the test's own, then the session's Redis Cluster (three shards)."""
    if request.param == "cluster":
        yield request.getfixturevalue("redis_cluster").url
        return
    server = RedisServer(tmp_path / "redis").start()
    yield server.url
    server.stop()


def test_a_prepared_bundle_takes_over_every_item_while_serving_and_rollback_restores_the_old_answers(
    redis_url, tmp_path: Path, models: Path, corpus: Path
) -> None:
    service = _service(redis_url, tmp_path, models, corpus)
    try:
        _demo_loaded(service)
        assert service.call("POST", "/v1/items:batch", {"items": _api_items(corpus)}, key=KEY).status == 200
        before = service.call("POST", "/v1/search/text-to-image", {"text": "fruit", "k": 10}).body
        with Load(service) as load:
            prepared = service.call("POST", "/v1/models:prepare", {"bundle": "permuted"}, key=KEY)
            assert prepared.status == 202 and prepared.body["state"] in ("preparing", "ready"), prepared.body
            ready = _wait(service, "/v1/models:rollout", lambda body: body["state"] == "ready")
            assert service.call("GET", "/readyz").body["rollout"]["state"] == "ready"
            swapped = service.call("POST", "/v1/models:swap", {"bundle": "permuted"}, key=KEY, timeout=240)
            time.sleep(0.5)
        assert swapped.status == 200, swapped.body
        assert swapped.body["gate_note"] == "passed" and all(
            row["change"] == 0 for row in swapped.body["gate"]["table"]
        )
        assert set(load.statuses) == {("search", 200), ("write", 200)}, load.statuses
        assert ready["report"]["not_reencodable"] == {}
        new = service.call("GET", "/v1/models").body
        rows = QUERY_ROWS + DATABASE_ROWS
        assert new["bundle_id"].endswith("p0")
        assert new["index"]["items"] == {
            "image": rows + 2 + FEATURE_ITEMS,
            "text": rows + len(TEXTS) + len(load.written),
        }
        for item, code in _expected_codes(models / "permuted", corpus).items():
            assert service.call("GET", f"/v1/items/{item}").body["code_hex"] == code, item
        for item in load.written:  # written to both while it was prepared, or after the swap
            assert service.call("GET", f"/v1/items/{item}").status == 200, item

        back = service.call("POST", "/v1/models:rollback", key=KEY, timeout=240)
        assert back.status == 200 and back.body["gate_note"] == "rollback: no gate"
        again = service.call("POST", "/v1/search/text-to-image", {"text": "fruit", "k": 10}).body
        assert again["results"] == before["results"] and again["bundle_id"] == before["bundle_id"]
        for item in load.written:  # the old index was written to while the new bundle served
            assert service.call("GET", f"/v1/items/{item}").status == 200, item
    finally:
        service.stop()


def test_the_gate_refuses_a_worse_bundle_with_its_table_and_the_live_model_stays(
    redis_url, tmp_path: Path, models: Path, corpus: Path
) -> None:
    service = _service(redis_url, tmp_path, models, corpus)
    try:
        _demo_loaded(service)
        assert service.call("POST", "/v1/models:prepare", {"bundle": "random"}, key=KEY).status == 202
        _wait(service, "/v1/models:rollout", lambda body: body["state"] == "ready")
        refused = service.call("POST", "/v1/models:swap", {"bundle": "random"}, key=KEY, timeout=240)
        assert refused.status == 409 and "is worse on" in refused.body["detail"], refused.body
        gate = refused.body["gate"]
        assert not gate["passed"] and f"{QUERY_ROWS} held-out rows" in gate["evaluation"]
        table = {row["metric"]: row for row in gate["table"]}
        assert set(table) == {"t2i_P@10", "i2t_P@10", "t2i_R@10", "i2t_R@10"}
        assert table["t2i_P@10"]["change"] < -0.05 and set(gate["refused_by"]) <= set(table)
        assert service.call("GET", "/v1/models").body["method"] == "dsfh-instance"
        dropped = service.call("POST", "/v1/models:drop", key=KEY)
        assert dropped.status == 200 and service.call("GET", "/v1/models:rollout").status == 404
    finally:
        service.stop()


def test_a_pass_killed_with_its_worker_is_resumed_and_the_live_model_never_stops(
    redis_url, tmp_path: Path, models: Path, corpus: Path
) -> None:
    first, second = (_service(redis_url, tmp_path, models, corpus) for _ in range(2))
    try:
        _demo_loaded(first)
        assert first.call("POST", "/v1/models:prepare", {"bundle": "permuted"}, key=KEY).status == 202
        with Load(second) as load:
            _wait(first, "/v1/models:rollout", lambda body: body["report"].get("done", 0) > 0, timeout=120)
            first.kill()
            stalled = second.call("GET", "/v1/models:rollout").body
            assert stalled["state"] == "preparing" and stalled["report"]["done"] < stalled["report"]["total"]
            resumed = second.call("POST", "/v1/models:prepare", {"bundle": "permuted"}, key=KEY)
            assert resumed.status == 202 and resumed.body["state"] == "preparing"
            ready = _wait(second, "/v1/models:rollout", lambda body: body["state"] == "ready")
        assert set(load.statuses) == {("search", 200), ("write", 200)}, load.statuses
        assert ready["report"]["present"]["image"] + ready["report"]["present"]["text"] > 0  # the first pass's
        swapped = second.call("POST", "/v1/models:swap", {"bundle": "permuted"}, key=KEY, timeout=240)
        assert swapped.status == 200, swapped.body
        items = second.call("GET", "/v1/models").body["index"]["items"]
        assert items["image"] == QUERY_ROWS + DATABASE_ROWS and items["text"] == QUERY_ROWS + DATABASE_ROWS + len(
            load.written
        )
    finally:
        first.stop()
        second.stop()


def test_a_new_default_bundle_fills_its_index_from_the_previous_one_on_start(
    redis_url, tmp_path: Path, models: Path, corpus: Path
) -> None:
    old = _service(redis_url, tmp_path, models, corpus)
    try:
        _demo_loaded(old)
        assert old.call("POST", "/v1/items:batch", {"items": _api_items(corpus)}, key=KEY).status == 200
        assert old.call("DELETE", "/v1/items/api/t3", key=KEY).status == 204
        before = old.call("GET", "/v1/models").body["index"]["items"]
    finally:
        old.stop()
    new = _service(redis_url, tmp_path, models, corpus, bundle="permuted")  # an upgrade brought a new default
    try:
        upgrade = new.call("GET", "/readyz").body["rollout"]
        assert upgrade["purpose"] == "upgrade" and upgrade["live"].endswith("p0")
        _wait(new, "/v1/models:rollout", lambda body: body["state"] == "ready")
        _demo_loaded(new)
        assert new.call("GET", "/v1/models").body["index"]["items"] == before
        expected = _expected_codes(models / "permuted", corpus)
        for item, code in expected.items():
            reply = new.call("GET", f"/v1/items/{item}")
            assert (reply.status, reply.body.get("code_hex")) == ((404, None) if item == "api/t3" else (200, code)), (
                item
            )
    finally:
        new.stop()
