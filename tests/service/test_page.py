"""The search page's server side: the page and its weight, thumbnails (and that no path outside the corpus
is reachable through them), "more like this" by stored code, and the demo corpus of the first start."""

from __future__ import annotations

import base64
import io
import logging
import threading
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from service import thumbnails
from service.app import create_app
from service.routes.page import STATIC
from service.settings import DEFAULT_BUNDLE, Settings
from tests.support.page_service import FRUIT, OTHERS, small_openclipart
from training.datasets import openclipart

KEY = {"X-API-Key": "test-key"}
CORPUS = openclipart.DEFAULT_ROOT
APPLE = "food/fruit/an_apple_01"
PAGE_BUDGET_BYTES = 200_000


def _settings(redis_server, **overrides) -> Settings:
    values = {"redis_url": redis_server.url, "bundle_path": DEFAULT_BUNDLE, "index_name": uuid.uuid4().hex}
    return Settings(**(values | {"api_key": "test-key", "demo_corpus": False} | overrides))


@pytest.fixture
def client(redis_server):
    with TestClient(create_app(_settings(redis_server))) as c:
        yield c


@pytest.fixture(scope="module")
def page_client(redis_server):
    with TestClient(create_app(_settings(redis_server))) as c:
        yield c


STATIC_FILES = {path.read_bytes() for path in STATIC.iterdir()}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ingest(client: TestClient, *items: dict) -> dict:
    reply = client.post("/v1/items:batch", json={"items": list(items)}, headers=KEY)
    assert reply.status_code == 200, reply.text
    return reply.json()


def _image(item_id: str, **given) -> dict:
    return {"id": item_id, "modality": "image", **given}


def _decoded(body: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def test_the_page_and_its_assets_are_local_small_and_told_the_k_limit(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'data-max-k="100"' in page.text
    assets = [client.get(f"/static/{name}") for name in ("page.js", "page.css")]
    assert all(a.status_code == 200 for a in assets)
    weight = len(page.content) + sum(len(a.content) for a in assets)
    assert weight < PAGE_BUDGET_BYTES
    for body in (page.text, *(a.text for a in assets)):
        assert "http://" not in body and "https://" not in body and "//cdn" not in body  # nothing from elsewhere
    assert client.get("/static/../settings.py").status_code == 404
    assert client.get("/static/%2e%2e/settings.py").status_code == 404


def test_an_uploaded_image_keeps_a_small_thumbnail_replaced_and_dropped_with_the_item(client) -> None:
    png = (CORPUS / "png" / f"{APPLE}.png").read_bytes()
    _ingest(client, _image("img:up", image_base64=_b64(png)))
    reply = client.get("/v1/thumbnails/img:up")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/webp"
    assert _decoded(reply.content).size == (thumbnails.SIZE, thumbnails.SIZE)
    assert len(reply.content) < 16_000
    assert "max-age" in reply.headers["cache-control"]
    again = client.get("/v1/thumbnails/img:up", headers={"If-None-Match": reply.headers["etag"]})
    assert again.status_code == 304 and again.content == b""

    _ingest(client, _image("img:up", features=[0.5] * 1280))  # replaced by a feature-only item
    reply = client.get("/v1/thumbnails/img:up")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/svg+xml"
    assert reply.content == thumbnails.PLACEHOLDER

    _ingest(client, _image("img:up", image_base64=_b64(png)))
    assert client.delete("/v1/items/img:up", headers=KEY).status_code == 204
    assert client.get("/v1/thumbnails/img:up").status_code == 404
    assert (
        client.app.state.runtime.client.exists(f"xmh:{client.app.state.runtime.settings.index_name}:thumb:img:up") == 0
    )


def test_corpus_items_show_their_installed_file_and_unknown_or_text_items_are_404(client) -> None:
    _ingest(
        client,
        _image("img:corpus", features=[0.5] * 1280, metadata={"path": APPLE}),
        {"id": "txt:corpus", "modality": "text", "text": "an apple"},
    )
    reply = client.get("/v1/thumbnails/img:corpus")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/webp"
    expected = thumbnails.make(CORPUS / "png" / f"{APPLE}.png", 50_000_000)
    assert reply.content == expected
    assert client.get("/v1/thumbnails/img:nobody").status_code == 404
    text = client.get("/v1/thumbnails/txt:corpus")
    assert text.status_code == 404 and "text item" in text.json()["detail"]


@pytest.fixture
def fake_corpus(tmp_path: Path) -> Path:
    """A corpus root holding one real picture, a symlink to a file outside it, a corrupt file and a bomb."""
    root = tmp_path / "corpus"
    (root / "png" / "ok").mkdir(parents=True)
    (root / "png" / "ok" / "apple.png").write_bytes((CORPUS / "png" / f"{APPLE}.png").read_bytes())
    outside = tmp_path / "secret.png"
    outside.write_bytes((CORPUS / "png" / f"{APPLE}.png").read_bytes())
    (root / "png" / "ok" / "escape.png").symlink_to(outside)
    (root / "png" / "ok" / "inside-link.png").symlink_to(root / "png" / "ok" / "apple.png")
    (root / "png" / "ok" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 4·10⁸ pixels in a few KB
    (root / "png" / "ok" / "bomb.png").write_bytes(bomb.getvalue())
    return tmp_path


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("ok/apple", 200),
        ("ok/inside-link", 200),  # a symlink that stays inside the corpus (as Debian files categories)
        ("ok/escape", 404),  # a symlink out of the corpus
        ("../secret", 404),
        ("ok/../../secret", 404),
        ("/etc/passwd", 404),
        ("__ABS__", 404),  # the absolute path of a real PNG outside the corpus
        ("ok/missing", 404),
        ("", 404),
        ("ok/corrupt", 404),
        ("ok/bomb", 404),
        (12, 404),
        ("ok/apple\u0000", 404),
    ],
)
def test_thumbnails_reach_no_file_outside_the_corpus_and_bad_files_are_4xx(
    redis_server, fake_corpus: Path, path, status
) -> None:
    if path == "__ABS__":
        path = str(fake_corpus / "secret")
    with TestClient(create_app(_settings(redis_server, XMHASH_CORPUS_ROOT=fake_corpus / "corpus"))) as client:
        _ingest(client, _image("img:x", features=[0.5] * 1280, metadata={"path": path}))
        reply = client.get("/v1/thumbnails/img:x")
    assert reply.status_code == status, reply.text
    if status == 200:
        assert _decoded(reply.content).size == (thumbnails.SIZE, thumbnails.SIZE)


def test_more_like_this_searches_both_modalities_with_the_stored_code_and_leaves_the_item_out(client) -> None:
    png = (CORPUS / "png" / f"{APPLE}.png").read_bytes()
    _ingest(
        client,
        _image("img:a", image_base64=_b64(png)),
        _image("img:b", image_base64=_b64(png)),  # the same picture: the same code
        {"id": "txt:a", "modality": "text", "text": "red apple fruit"},
    )
    code = client.get("/v1/items/img:a").json()["code_hex"]
    images = client.post("/v1/search/similar", json={"id": "img:a", "target": "image", "k": 5}).json()
    assert [h["id"] for h in images["results"]] == ["img:b"] and images["results"][0]["distance"] == 0
    texts = client.post("/v1/search/similar", json={"id": "img:a", "target": "text", "k": 5, "probe": "all"}).json()
    query = client.post("/v1/search/text-to-image", json={"text": "red apple fruit", "k": 5, "probe": "all"}).json()
    assert [h["id"] for h in texts["results"]] == ["txt:a"]
    distance = bin(int(code, 16) ^ int(client.get("/v1/items/txt:a").json()["code_hex"], 16)).count("1")
    assert texts["results"][0]["distance"] == distance == query["results"][0]["distance"]
    assert texts["probe"] == "all" and set(texts["timing"]) == {"encode_ms", "search_ms", "total_ms"}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"id": "img:none", "target": "image"}, 404, "no item"),
        ({"id": "img:a", "target": "image", "k": 101}, 422, "k must be at most 100"),
        ({"id": "img:a", "target": "image", "probe": 100_000}, 422, "probe"),
        ({"id": "img:a", "target": "audio"}, 422, "target"),
        ({"id": "img:a"}, 422, "target"),
    ],
)
def test_more_like_this_rejects_bad_queries_with_a_4xx(client, body, status, message) -> None:
    _ingest(client, _image("img:a", features=[0.5] * 1280))
    reply = client.post("/v1/search/similar", json=body)
    assert reply.status_code == status and message in str(reply.json()["detail"])


def test_same_modality_search_takes_the_cross_modal_bodies_and_finds_the_query_itself_first(client) -> None:
    png = (CORPUS / "png" / f"{APPLE}.png").read_bytes()
    other = _gray_png()
    _ingest(
        client,
        _image("img:apple", image_base64=_b64(png)),
        _image("img:other", image_base64=_b64(other)),
        {"id": "txt:apple", "modality": "text", "text": "red apple fruit"},
        {"id": "txt:car", "modality": "text", "text": "blue car"},
    )
    by_json = client.post("/v1/search/image-to-image", json={"image_base64": _b64(png), "k": 5, "probe": "all"})
    by_upload = client.post("/v1/search/image-to-image/upload", files={"image": png}, data={"k": "5", "probe": "all"})
    by_code = client.post("/v1/search/similar", json={"id": "img:apple", "target": "image", "k": 5, "probe": "all"})
    for reply in (by_json, by_upload):
        assert reply.status_code == 200, reply.text
        hits = reply.json()["results"]
        assert {h["id"] for h in hits} == {"img:apple", "img:other"}  # images only
        assert hits[0]["id"] == "img:apple" and hits[0]["distance"] == 0
    assert [h["id"] for h in by_code.json()["results"]] == ["img:other"]  # the stored item leaves itself out
    texts = client.post("/v1/search/text-to-text", json={"text": "red apple fruit", "k": 5, "probe": "all"}).json()
    assert texts["results"][0]["id"] == "txt:apple" and texts["results"][0]["distance"] == 0
    assert {h["id"] for h in texts["results"]} == {"txt:apple", "txt:car"}  # texts only
    cross = client.post("/v1/search/image-to-text", json={"image_base64": _b64(png), "k": 5, "probe": "all"}).json()
    assert set(cross) == set(by_json.json())  # one response shape for every direction


def _gray_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (32, 32), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_method_not_allowed_lists_every_method_of_the_path(client) -> None:
    reply = client.options("/v1/items/anything")
    assert reply.status_code == 405
    assert {m.strip() for m in reply.headers["allow"].split(",")} >= {"GET", "DELETE"}
    reply = client.put("/v1/search/image-to-image")
    assert reply.status_code == 405 and reply.headers["allow"] == "POST"


PATH_PIECES = [*"./%25eAZ\\:~?#", "..", "%00", "%2e%2e", "%2f", "%5c"]


@given(path=st.lists(st.sampled_from(PATH_PIECES), max_size=30).map("".join))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_page_its_assets_and_thumbnails_answer_any_path_without_5xx(page_client, path: str) -> None:
    """Traversal forms (``..``, encoded dots, slashes and backslashes, an encoded NUL), unknown ids: a 2xx/3xx/4xx,
    and nothing but the page and its static files is served."""
    for prefix in ("/", "/static/", "/v1/thumbnails/"):
        url = prefix + (path.lstrip("/") if prefix == "/" else path)  # "//x" is no relative URL to send
        reply = page_client.get(url)
        assert reply.status_code < 500, (url, reply.status_code, reply.text[:200])
        if prefix == "/static/" and reply.status_code == 200:  # "/static/.." is the client's "/": the page
            assert reply.content in STATIC_FILES | {page_client.get("/").content}, url


def _wait_for_demo_ingestion(seconds: float = 120) -> None:
    for thread in threading.enumerate():
        if thread.name == "demo-ingest":
            thread.join(seconds)
            assert not thread.is_alive()


def test_the_demo_corpus_is_ingested_on_the_first_start_only(redis_server, monkeypatch, caplog) -> None:
    monkeypatch.setattr(openclipart, "load_openclipart", small_openclipart())
    settings = _settings(redis_server, demo_corpus=True)
    total = FRUIT + OTHERS
    caplog.set_level(logging.INFO, logger="xmhash.demo")
    with TestClient(create_app(settings)) as client:
        _wait_for_demo_ingestion()
        assert client.get("/readyz").json()["demo_corpus"] == {"state": "done", "done": total, "total": total}
        assert client.get("/v1/models").json()["index"]["items"] == {"image": total, "text": total}
        hit = client.post("/v1/search/text-to-image", json={"text": "apple", "k": 1}).json()["results"][0]
        assert set(hit["metadata"]) == {"path", "title", "labels"}
        assert client.get(f"/v1/thumbnails/{hit['id']}").status_code == 200
    assert f"demo corpus: {total} / {total} items per modality" in caplog.text
    assert "items/s" in caplog.text

    def never(*args, **kwargs):
        raise AssertionError("the corpus was read again")

    monkeypatch.setattr(openclipart, "load_openclipart", never)
    caplog.clear()
    restart = settings.model_copy(update={"run_id": uuid.uuid4().hex[:16]})  # a new run of the service
    with TestClient(create_app(restart)) as client:
        _wait_for_demo_ingestion()
        assert client.get("/readyz").json()["demo_corpus"]["state"] == "done"
        assert client.get("/v1/models").json()["index"]["items"] == {"image": total, "text": total}
    assert "demo corpus: already ingested" in caplog.text


def test_the_switch_starts_empty_and_a_missing_corpus_leaves_the_service_serving(redis_server, tmp_path) -> None:
    with TestClient(create_app(_settings(redis_server, demo_corpus=False))) as client:
        assert client.get("/readyz").json()["demo_corpus"] == {"state": "off"}
        assert client.get("/v1/models").json()["index"]["items"] == {"image": 0, "text": 0}
    with pytest.MonkeyPatch.context() as patch:
        missing = openclipart.load_openclipart
        patch.setattr(openclipart, "load_openclipart", lambda root: missing(root=tmp_path / "nothing"))
        with TestClient(create_app(_settings(redis_server, demo_corpus=True))) as client:
            _wait_for_demo_ingestion()
            progress = client.get("/readyz").json()["demo_corpus"]
            assert progress["state"] == "unavailable" and "OpenClipart not found" in progress["error"]
            assert client.post("/v1/search/text-to-image", json={"text": "apple"}).json()["results"] == []
