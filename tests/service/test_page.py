"""The search page's server side: the page and its weight, thumbnails (and that no path outside a loaded
collection is reachable through them), "more like this" by stored code, and the demo corpus of the first start."""

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

from index import collection_registry
from service import thumbnails
from service.app import create_app
from service.routes.page import STATIC
from service.settings import DEFAULT_BUNDLE, Settings
from tests.support.page_service import FRUIT, OTHERS, small_demo  # noqa: F401 (a fixture)
from training.datasets import openclipart

KEY = {"X-API-Key": "test-key"}
CORPUS = openclipart.DEFAULT_ROOT
APPLE = "food/fruit/an_apple_01"
PAGE_BUDGET_BYTES = 200_000


def _settings(server, **overrides) -> Settings:
    values = {"redis_url": server.url, "bundle_path": DEFAULT_BUNDLE, "index_name": uuid.uuid4().hex}
    return Settings(**(values | {"api_key": "test-key", "demo_corpus": False} | overrides))


@pytest.fixture
def client(any_redis):
    with TestClient(create_app(_settings(any_redis))) as c:
        yield c


@pytest.fixture(scope="module")
def page_client(any_redis):
    with TestClient(create_app(_settings(any_redis))) as c:
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


def test_the_page_has_an_icon_also_where_browsers_and_tools_look_by_default(client) -> None:
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in client.get("/").text
    linked, default = client.get("/static/favicon.svg"), client.get("/favicon.ico")
    for reply in (linked, default):
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("image/svg+xml")
    assert default.content == linked.content and len(default.content) < 1_000  # one small icon
    assert b"href" not in default.content  # nothing from elsewhere
    assert "max-age" in default.headers["cache-control"]


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


def _register(client: TestClient, name: str, folder: Path) -> None:
    runtime = client.app.state.runtime
    collection_registry.register(runtime.client, runtime.settings.index_name, name, folder / "manifest.jsonl")


def test_collection_items_show_their_file_and_unknown_or_text_items_are_404(client, tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "apple.png").write_bytes((CORPUS / "png" / f"{APPLE}.png").read_bytes())
    _register(client, "mine", tmp_path)
    _ingest(
        client,
        _image("img:mine", features=[0.5] * 1280, metadata={"collection": "mine", "image": "pics/apple.png"}),
        {"id": "txt:mine", "modality": "text", "text": "an apple"},
    )
    reply = client.get("/v1/thumbnails/img:mine")
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/webp"
    expected = thumbnails.make(CORPUS / "png" / f"{APPLE}.png", 50_000_000)
    assert reply.content == expected
    assert client.get("/v1/thumbnails/img:nobody").status_code == 404
    text = client.get("/v1/thumbnails/txt:mine")
    assert text.status_code == 404 and "text item" in text.json()["detail"]


def test_a_collection_name_is_never_re_pointed_to_another_folder(client, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _register(client, "taken", tmp_path / "a")
    _register(client, "taken", tmp_path / "a")  # the same folder again: fine
    with pytest.raises(collection_registry.CollectionNameTaken):
        _register(client, "taken", tmp_path / "b")


@pytest.fixture(scope="module")
def fake_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection folder holding one real picture, a symlink to a file outside it, a symlinked folder
    of pictures (as the OpenClipart export links the corpus), a corrupt file and a bomb."""
    tmp_path = tmp_path_factory.mktemp("thumbnails")
    root = tmp_path / "collection"
    (root / "ok").mkdir(parents=True)
    apple = (CORPUS / "png" / f"{APPLE}.png").read_bytes()
    (root / "ok" / "apple.png").write_bytes(apple)
    outside = tmp_path / "secret.png"
    outside.write_bytes(apple)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "pear.png").write_bytes(apple)
    (root / "linked").symlink_to(tmp_path / "linked", target_is_directory=True)
    (root / "ok" / "escape.png").symlink_to(outside)
    (root / "ok" / "inside-link.png").symlink_to(root / "ok" / "apple.png")
    (root / "ok" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, format="PNG")  # 4·10⁸ pixels in a few KB
    (root / "ok" / "bomb.png").write_bytes(bomb.getvalue())
    return tmp_path


@pytest.fixture(scope="module")
def thumbnail_client(any_redis, fake_collection: Path):
    """One service with the fake collection registered as ``c`` for every thumbnail case: each stores
    ``img:x`` again, with its own metadata (features only: no thumbnail of its own is kept)."""
    with TestClient(create_app(_settings(any_redis))) as client:
        _register(client, "c", fake_collection / "collection")
        yield client


@pytest.mark.parametrize(
    ("collection", "path", "status"),
    [
        ("c", "ok/apple.png", 200),
        ("c", "ok/inside-link.png", 200),  # a symlink that stays inside the collection
        ("c", "linked/pear.png", 200),  # inside a folder the collection links in at its top level
        ("c", "ok/escape.png", 404),  # a symlink out of the collection
        ("c", "../secret.png", 404),
        ("c", "ok/../../secret.png", 404),
        ("c", "/etc/passwd", 404),
        ("c", "__ABS__", 404),  # the absolute path of a real PNG outside the collection
        ("c", "ok/missing.png", 404),
        ("c", "", 404),
        ("c", "ok/corrupt.png", 404),
        ("c", "ok/bomb.png", 404),
        ("c", 12, 404),
        ("c", "ok/apple.png\u0000", 404),
        ("c", "x" * 5000 + ".png", 404),  # longer than the file system takes
        ("unregistered", "ok/apple.png", 404),
        (["c"], "ok/apple.png", 404),
    ],
)
def test_thumbnails_reach_no_file_outside_the_collection_and_bad_files_are_4xx(
    thumbnail_client, fake_collection: Path, collection, path, status
) -> None:
    if path == "__ABS__":
        path = str(fake_collection / "secret.png")
    _ingest(
        thumbnail_client, _image("img:x", features=[0.5] * 1280, metadata={"collection": collection, "image": path})
    )
    reply = thumbnail_client.get("/v1/thumbnails/img:x")
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
    assert reply.status_code == status and message in reply.json()["detail"]


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


def test_the_demo_corpus_is_ingested_on_the_first_start_only(any_redis, small_demo: Path, caplog) -> None:  # noqa: F811
    settings = _settings(any_redis, demo_corpus=True, demo_collection=small_demo)
    total = FRUIT + OTHERS
    caplog.set_level(logging.INFO, logger="xmhash.demo")
    with TestClient(create_app(settings)) as client:
        _wait_for_demo_ingestion()
        assert client.get("/readyz").json()["demo_corpus"] == {"state": "done", "done": total, "total": total}
        assert client.get("/v1/models").json()["index"]["items"] == {"image": total, "text": total}
        hit = client.post("/v1/search/text-to-image", json={"text": "apple", "k": 1}).json()["results"][0]
        assert set(hit["metadata"]) == {"collection", "image", "title", "labels"}
        assert client.get(f"/v1/thumbnails/{hit['id']}").status_code == 200
    assert f"demo corpus: {total} / {total} items per modality" in caplog.text
    assert "items/s" in caplog.text

    caplog.clear()
    moved = small_demo.parent / "moved.jsonl"  # a later start reads no manifest: it finds the corpus done
    small_demo.rename(moved)
    try:
        restart = settings.model_copy(update={"run_id": uuid.uuid4().hex[:16]})  # a new run of the service
        with TestClient(create_app(restart)) as client:
            _wait_for_demo_ingestion()
            assert client.get("/readyz").json()["demo_corpus"]["state"] == "done"
            assert client.get("/v1/models").json()["index"]["items"] == {"image": total, "text": total}
    finally:
        moved.rename(small_demo)
    assert "demo corpus: already ingested" in caplog.text


def test_the_switch_starts_empty_and_a_missing_corpus_leaves_the_service_serving(any_redis, tmp_path) -> None:
    with TestClient(create_app(_settings(any_redis, demo_corpus=False))) as client:
        assert client.get("/readyz").json()["demo_corpus"] == {"state": "off"}
        assert client.get("/v1/models").json()["index"]["items"] == {"image": 0, "text": 0}
    missing = _settings(any_redis, demo_corpus=True, demo_collection=tmp_path / "nothing" / "manifest.jsonl")
    with TestClient(create_app(missing)) as client:
        _wait_for_demo_ingestion()
        progress = client.get("/readyz").json()["demo_corpus"]
        assert progress["state"] == "unavailable" and "export-collection openclipart" in progress["error"]
        assert client.post("/v1/search/text-to-image", json={"text": "apple"}).json()["results"] == []
