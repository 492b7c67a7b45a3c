"""The REST service end to end: the real app, the committed default model, a real redis-server and a Redis
Cluster (``any_redis``: ``redis+cluster://``, three shards)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.bundle.reader import read_manifest
from index.errors import StoreUnavailableError
from index.shards import shard_of
from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings
from training.datasets.openclipart import DEFAULT_ROOT, load_openclipart
from training.evaluation.metrics import relevance

KEY = {"X-API-Key": "test-key"}
_BUNDLE_BYTES = read_manifest(DEFAULT_BUNDLE).code_bits // 8  # a stored code's bytes under the default bundle
INGESTED = 400  # database items per modality sent through the batch endpoint


def _settings(server, **overrides) -> Settings:
    index_name = uuid.uuid4().hex
    return Settings(
        redis_url=server.url,
        bundle_path=DEFAULT_BUNDLE,
        index_name=index_name,
        api_key="test-key",
        **overrides,
    )


@pytest.fixture(scope="module")
def client(any_redis):
    """A service its tests share: they store nothing (refused writes, bad queries, the docs)."""
    with TestClient(create_app(_settings(any_redis))) as c:
        yield c


@pytest.fixture
def fresh_client(any_redis):
    """A service on an index of its own, for a test that counts what it stores."""
    with TestClient(create_app(_settings(any_redis))) as c:
        yield c


def _png_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def corpus():
    return load_openclipart()


def _database_rows(corpus) -> np.ndarray:
    """A seeded random sample of the database: the corpus order is by category, so a prefix is skewed."""
    return np.random.default_rng(0).choice(corpus.split.database, INGESTED, replace=False)


def _query_rows(corpus, n: int) -> np.ndarray:
    return np.random.default_rng(1).choice(corpus.split.query, n, replace=False)


@pytest.fixture(scope="module")
def loaded(any_redis, corpus):
    """An app holding INGESTED real database images and texts, ingested as raw PNG files and raw text."""
    with TestClient(create_app(_settings(any_redis))) as c:
        rows = _database_rows(corpus)
        for start in range(0, INGESTED, 100):
            part = rows[start : start + 100]
            images = [_png_b64(DEFAULT_ROOT / "png" / f"{corpus.ids[i]}.png") for i in part]
            items = [
                {
                    "id": f"img:{corpus.ids[i]}",
                    "modality": "image",
                    "image_base64": b64,
                    "metadata": {"row": int(i)},
                }
                for i, b64 in zip(part, images, strict=True)
            ] + [
                {
                    "id": f"txt:{corpus.ids[i]}",
                    "modality": "text",
                    "text": corpus.texts[i],
                    "metadata": {"row": int(i)},
                }
                for i in part
            ]
            response = c.post("/v1/items:batch", json={"items": items}, headers=KEY)
            assert response.status_code == 200, response.text
            assert response.json()["rejected"] == 0, response.json()
        yield c


def _precision_at_10(corpus, query_rows, responses) -> tuple[float, float]:
    db_rows = _database_rows(corpus)
    prior = relevance(corpus.labels[query_rows], corpus.labels[db_rows]).mean()
    hits = [[h["metadata"]["row"] for h in r.json()["results"]] for r in responses]
    rel = [relevance(corpus.labels[[q]], corpus.labels[h])[0].mean() for q, h in zip(query_rows, hits, strict=True)]
    return float(np.mean(rel)), float(prior)


def test_text_queries_find_relevant_images_well_above_the_label_prior(loaded, corpus) -> None:
    rows = _query_rows(corpus, 100)
    responses = [loaded.post("/v1/search/text-to-image", json={"text": corpus.texts[i], "k": 10}) for i in rows]
    ok = [(i, r) for i, r in zip(rows, responses, strict=True) if r.status_code == 200]
    assert len(ok) == len(rows)  # every text is understood: no vocabulary to miss
    precision, prior = _precision_at_10(corpus, [i for i, _ in ok], [r for _, r in ok])
    assert precision > prior + 0.3, (precision, prior)


def test_image_uploads_find_relevant_texts_well_above_the_label_prior(loaded, corpus) -> None:
    rows = _query_rows(corpus, 60)
    responses = []
    for i in rows:
        data = (DEFAULT_ROOT / "png" / f"{corpus.ids[i]}.png").read_bytes()
        responses.append(
            loaded.post("/v1/search/image-to-text/upload", files={"image": ("q.png", data)}, data={"k": "10"})
        )
    assert all(r.status_code == 200 for r in responses)
    precision, prior = _precision_at_10(corpus, rows, responses)
    assert precision > prior + 0.3, (precision, prior)


def test_feature_queries_match_raw_queries_and_the_index_called_directly(loaded, corpus) -> None:
    runtime = loaded.app.state.runtime
    i = corpus.split.query[3]
    features = runtime.bundle.text_features([corpus.texts[i]])[0]
    raw = loaded.post("/v1/search/text-to-image", json={"text": corpus.texts[i], "k": 20, "probe": 4}).json()
    via_features = loaded.post("/v1/search/text-to-image", json={"features": features.tolist(), "k": 20, "probe": 4})
    assert via_features.json()["results"] == raw["results"]
    real = runtime.bundle.real_codes("text", features[None])  # the default bundle re-ranks by it
    code = runtime.bundle.packed_codes("text", features[None])
    [direct] = runtime.index.search("image", code, 20, 4, query_real=real)
    assert [(h["id"], h["distance"]) for h in raw["results"]] == [(h.id, h.distance) for h in direct]
    path = DEFAULT_ROOT / "png" / f"{corpus.ids[i]}.png"
    image = base64.b64encode(path.read_bytes()).decode()
    by_json = loaded.post("/v1/search/image-to-text", json={"image_base64": image, "k": 5, "probe": "all"}).json()
    image_features = runtime.bundle.image_features(runtime.bundle.decode_image(path)[None])[0]
    by_features = loaded.post(
        "/v1/search/image-to-text", json={"features": image_features.tolist(), "k": 5, "probe": "all"}
    )
    assert by_features.json()["results"] == by_json["results"] and by_json["probe"] == "all"


def test_metadata_filter_keeps_only_matching_items(loaded, corpus) -> None:
    row = int(_database_rows(corpus)[7])
    response = loaded.post(
        "/v1/search/text-to-image",
        json={"text": corpus.texts[row], "k": 3, "probe": "all", "filter": {"metadata": {"row": row}}},
    )
    assert [h["id"] for h in response.json()["results"]] == [f"img:{corpus.ids[row]}"]


def test_items_can_be_read_replaced_idempotently_and_deleted(fresh_client) -> None:
    item = {"id": "txt/apple", "modality": "text", "text": "red apple fruit", "metadata": {"v": 1}}
    for _ in range(2):
        assert fresh_client.post("/v1/items:batch", json={"items": [item]}, headers=KEY).json()["stored"] == 1
    stored = fresh_client.get("/v1/items/txt/apple").json()
    assert stored["modality"] == "text" and stored["metadata"] == {"v": 1}
    assert len(stored["code_hex"]) == 2 * _BUNDLE_BYTES
    assert fresh_client.get("/v1/models").json()["index"]["items"] == {"image": 0, "text": 1}
    assert fresh_client.delete("/v1/items/txt/apple", headers=KEY).status_code == 204
    assert fresh_client.get("/v1/items/txt/apple").status_code == 404
    assert fresh_client.delete("/v1/items/txt/apple", headers=KEY).status_code == 404


def test_a_batch_some_shards_refuse_answers_which_items_were_stored(redis_cluster, monkeypatch) -> None:
    """On a sharded index a shard that fails its part leaves the others' parts stored: the answer names
    both, and sending the batch again stores the rest (ids are keys)."""
    with TestClient(create_app(_settings(redis_cluster))) as c:
        store = c.app.state.runtime.index.store
        broken = store.parts[1]
        items = [{"id": f"t{i}", "modality": "text", "text": f"red apple {i}"} for i in range(30)]

        def refuse(groups):
            raise StoreUnavailableError("Redis is unreachable: the test's shard 1")

        monkeypatch.setattr(broken, "write", refuse)
        body = c.post("/v1/items:batch", json={"items": items}, headers=KEY).json()
        on_broken = {i["id"] for i in items if store.parts[int(shard_of([i["id"]], 3)[0])] is broken}
        assert 0 < len(on_broken) < len(items) and body["stored"] == len(items) - len(on_broken)
        refused = {r["id"] for r in body["results"] if r["status"] == "rejected"}
        assert refused == on_broken and all("send it again" in r["error"] for r in body["results"] if r["error"])
        monkeypatch.undo()
        again = c.post("/v1/items:batch", json={"items": items}, headers=KEY).json()
        assert again["stored"] == len(items)
        assert c.get("/v1/models").json()["index"]["items"]["text"] == len(items)


def test_writes_need_the_api_key(client) -> None:
    item = {"id": "a", "modality": "text", "text": "apple"}
    assert client.post("/v1/items:batch", json={"items": [item]}).status_code == 403
    assert client.post("/v1/items:batch", json={"items": [item]}, headers={"X-API-Key": "wrong"}).status_code == 403
    assert client.delete("/v1/items/a").status_code == 403


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_bad_item_is_rejected_alone_and_nothing_of_it_is_stored(fresh_client) -> None:
    items = [
        {"id": "good", "modality": "text", "text": "red apple"},
        {"id": "empty", "modality": "text", "text": "   "},
        {"id": "short", "modality": "image", "features": [0.0, 1.0]},
        {"id": "broken", "modality": "image", "image_base64": base64.b64encode(b"not an image").decode()},
        {"id": "nan", "modality": "text", "features": [float("nan")] * 384},
        {"id": "word", "modality": "text", "features": ["1.0"] * 384},
        {"id": "what", "modality": "audio", "text": "x"},
        {"id": "good", "modality": "text", "text": "again"},
        {"modality": "text", "text": "no id"},
    ]
    raw = json.dumps({"items": items})  # the NaN literal, as a lax JSON writer sends it
    body = fresh_client.post("/v1/items:batch", content=raw, headers={**KEY, "content-type": "application/json"}).json()
    assert body["stored"] == 1 and body["rejected"] == 8
    errors = {r["id"]: r["error"] for r in body["results"] if r["status"] == "rejected"}
    assert errors["empty"] == "text is empty"
    assert "list of 1280 numbers" in errors["short"]
    assert "not a usable image" in errors["broken"]
    assert "NaN" in errors["nan"]
    assert errors["word"] == "features: Input should be a valid number (384 entries, first features.0)"
    assert "modality" in errors["what"]
    assert "earlier in this batch" in errors["good"]
    assert fresh_client.get("/v1/models").json()["index"]["items"] == {"image": 0, "text": 1}
    item = {"id": "good", "modality": "image", "image_base64": base64.b64encode(_png((8, 8))).decode()}
    conflict = fresh_client.post("/v1/items:batch", json={"items": [item]}, headers=KEY).json()
    assert conflict["results"][0]["error"] == "id is already stored as a text item"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/search/text-to-image", {"text": ""}, 422, "text is empty"),
        ("/v1/search/text-to-image", {"text": " \t\n "}, 422, "text is empty"),
        ("/v1/search/text-to-image", {"text": "apple", "k": 0}, 422, "greater than or equal to 1"),
        ("/v1/search/text-to-image", {"text": "apple", "k": 101}, 422, "k must be at most 100"),
        ("/v1/search/text-to-image", {"text": "apple", "probe": 1000}, 422, "probe must be between"),
        ("/v1/search/text-to-image", {"text": "apple", "features": [1.0]}, 422, "exactly one"),
        ("/v1/search/text-to-image", {"features": [1.0, 2.0]}, 422, "list of 384 numbers"),
        ("/v1/search/image-to-text", {"image_base64": "***"}, 422, "not valid base64"),
        (
            "/v1/search/image-to-text",
            {"image_base64": base64.b64encode(b"GIF89a").decode()},
            422,
            "not a usable image",
        ),
        (
            "/v1/search/image-to-text",
            {"image_base64": base64.b64encode(b"plain text, not a picture").decode()},
            422,
            "not a usable image: not an image format Pillow reads (PNG, JPEG, GIF, WebP, BMP, TIFF, …)",
        ),
        ("/v1/search/text-to-image", {"text": "apple", "extra": 1}, 422, "Extra inputs"),
    ],
)
def test_bad_queries_get_a_clear_4xx(client, path, body, status, message) -> None:
    response = client.post(path, json=body)
    assert response.status_code == status and message in response.text, response.text


def test_malformed_json_oversized_images_and_batches_are_4xx(any_redis) -> None:
    settings = _settings(any_redis, max_image_bytes=10_000, max_batch_items=2, max_image_pixels=10_000)
    with TestClient(create_app(settings)) as c:
        assert (
            c.post(
                "/v1/search/text-to-image", content=b"{not json", headers={"content-type": "application/json"}
            ).status_code
            == 422
        )
        big = c.post("/v1/search/image-to-text/upload", files={"image": ("x.png", b"\x89PNG" + b"0" * 20_000)})
        assert big.status_code == 422 and "larger than 10000 bytes" in big.text
        bomb = c.post("/v1/search/image-to-text/upload", files={"image": ("x.png", _png((200, 200)))})
        assert bomb.status_code == 422 and "image of 200×200 pixels exceeds the limit of 10000 pixels" in bomb.text
        items = [{"id": str(i), "modality": "text", "text": "apple"} for i in range(3)]
        too_many = c.post("/v1/items:batch", json={"items": items}, headers=KEY)  # over the schema's maxItems
        assert too_many.status_code == 422 and too_many.json()["detail"] == "a batch holds at most 2 items"


def test_health_readiness_models_and_metrics(fresh_client) -> None:
    assert fresh_client.get("/healthz").json() == {"status": "ok"}
    assert fresh_client.get("/readyz").json()["redis"] == "ok"
    models = fresh_client.get("/v1/models").json()
    assert models["method"] == "dsfh-instance" and models["code_bits"] == 128 and models["inputs"]["image"]["raw_input"]
    fresh_client.post("/v1/search/text-to-image", json={"text": "apple"})
    metrics = fresh_client.get("/metrics").text
    assert 'xmhash_request_seconds_count{method="POST",route="/v1/search/text-to-image",status="200"}' in metrics
    assert "xmhash_encode_seconds" in metrics and "xmhash_search_seconds" in metrics
    assert 'xmhash_index_items{modality="image"}' in metrics


def test_docs_are_served_from_local_assets(client) -> None:
    page = client.get("/docs").text
    assert "cdn" not in page.lower() and "swagger-ui-bundle.js" in page
    asset = next(line for line in page.splitlines() if "swagger-ui-bundle.js" in line).split('"')[1]
    assert client.get(asset).status_code == 200
    assert client.get("/redoc").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/search/text-to-image", "/v1/search/image-to-text", "/v1/items:batch"} <= set(schema["paths"])
