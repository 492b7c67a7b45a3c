"""Feature-vector search, the service's hot path: codes exactly those of the exported graphs, and responses
exactly the documented ``SearchResponse`` JSON."""

from __future__ import annotations

import json
import uuid

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from index.bundle import Bundle, load_bundle
from index.bundle.float32 import MARGIN
from index.codes import to_signs
from service.app import create_app
from service.schemas import SearchResponse
from service.settings import DEFAULT_BUNDLE, Settings

KEY = {"X-API-Key": "test-key", "content-type": "application/json"}
SEARCH = "/v1/search/text-to-image"
ODD = ["nan", "inf", "-inf", 0.5]  # metadata values; the first three are sent as JSON's NaN and ±Infinity


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    return load_bundle(DEFAULT_BUNDLE, threads=1)


def _exported_graph(bundle: Bundle, modality: str) -> ort.InferenceSession:
    """The modality's exported ONNX graph, run whole by onnxruntime as the service does (one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    graph = DEFAULT_BUNDLE / bundle.manifest.modalities.of(modality).onnx
    return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def _inputs(dim: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    words = np.zeros((64, dim), np.float32)
    for row, n in enumerate(rng.integers(0, 40, 64)):
        words[row, rng.choice(dim, n, replace=False)] = 1
    counts = np.where(rng.random((16, dim)) < 0.02, rng.integers(-64, 65, (16, dim)), 0).astype(np.float32)
    return {
        "bag of words": words,
        "signed counts": counts,
        "large integers": np.where(words[:8] > 0, 400_000, 0).astype(np.float32),
        "integers too large for an exact float32 sum": np.full((2, dim), 3e7, np.float32),
        "fractions": words[:8] * 0.5,
        "real numbers": rng.normal(size=(8, dim)).astype(np.float32),
        "zeros": np.zeros((1, dim), np.float32),
        "no rows": np.zeros((0, dim), np.float32),
    }


@pytest.mark.parametrize("modality", ["text", "image"])
def test_codes_are_those_of_the_exported_graph_bit_for_bit(bundle: Bundle, modality: str) -> None:
    """Every sign is the exported graph's; the real values (run in float32, ``index.bundle.float32``) are
    within its margin of the graph's."""
    exported = _exported_graph(bundle, modality)
    for name, x in _inputs(bundle.input_dim(modality)).items():
        # whole batches, and one query at a time as the service encodes them (a float product's rounding
        # may depend on the batch size, so each is compared with the graph run on the same rows)
        for rows in [x, *(x[i : i + 1] for i in range(min(len(x), 8)))]:
            real, graph = bundle.real_codes(modality, rows), exported.run(None, {"features": rows})[0]
            assert np.array_equal(to_signs(real), to_signs(graph)), name
            assert np.abs(real - graph).max(initial=0) < MARGIN, name


@pytest.fixture(scope="module")
def client(any_redis):
    settings = Settings(
        redis_url=any_redis.url, bundle_path=DEFAULT_BUNDLE, index_name=uuid.uuid4().hex, api_key="test-key"
    )
    with TestClient(create_app(settings)) as c:
        rng = np.random.default_rng(1)
        items = [
            {"id": f"img:{i}", "modality": "image", "features": rng.random(1280).round(3).tolist(),
             "metadata": {"n": i, "odd": ODD[i % 4], "name": "é"}}
            for i in range(12)
        ]  # fmt: skip
        body = json.dumps({"items": items}).replace('"nan"', "NaN").replace('"inf"', "Infinity")
        stored = c.post("/v1/items:batch", content=body.replace('"-inf"', "-Infinity"), headers=KEY)
        assert stored.status_code == 200 and stored.json()["stored"] == 12, stored.text
        yield c


def _bag_of_words(dim: int, words: list[int]) -> list[float]:
    x = [0.0] * dim
    for w in words:
        x[w] = 1.0
    return x


def test_a_feature_search_answers_exactly_the_search_response_json(client, bundle: Bundle) -> None:
    features = _bag_of_words(bundle.input_dim("text"), [3, 40, 100])
    response = client.post(SEARCH, json={"features": features, "k": 20, "probe": "all"})
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"results", "k", "probe", "bundle_id", "timing"}
    assert (body["k"], body["probe"], body["bundle_id"]) == (20, "all", bundle.bundle_id)
    assert set(body["timing"]) == {"encode_ms", "search_ms", "total_ms"}
    assert body["timing"]["total_ms"] == pytest.approx(body["timing"]["encode_ms"] + body["timing"]["search_ms"])
    assert len(body["results"]) == 12
    assert all(set(hit) == {"id", "distance", "bucket", "metadata", "score"} for hit in body["results"])
    scores = [hit["score"] for hit in body["results"]]  # the default bundle's re-ranker orders them
    assert scores == sorted(scores, reverse=True)
    odd = {hit["id"]: hit["metadata"]["odd"] for hit in body["results"]}
    assert odd == {f"img:{i}": None if i % 4 < 3 else 0.5 for i in range(12)}  # non-finite floats as null
    assert {hit["metadata"]["name"] for hit in body["results"]} == {"é"}
    assert response.content == SearchResponse.model_validate(body).model_dump_json().encode()


def test_a_feature_search_is_recorded_in_the_metrics(client, bundle: Bundle) -> None:
    def count(name: str) -> float:
        lines = client.get("/metrics").text.splitlines()
        return sum(float(line.split()[-1]) for line in lines if line.startswith(name))

    encoded = 'xmhash_encode_seconds_count{input="features",modality="text"}'
    searched = 'xmhash_search_seconds_count{target="image"}'
    requested = f'xmhash_request_seconds_count{{method="POST",route="{SEARCH}",status="200"}}'
    before = [count(name) for name in (encoded, searched, requested)]
    features = _bag_of_words(bundle.input_dim("text"), [7])
    assert client.post(SEARCH, json={"features": features}).status_code == 200
    assert [count(name) for name in (encoded, searched, requested)] == [n + 1 for n in before]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ("[NaN" + ", 0" * 383 + "]", "text features contain NaN, infinity or numbers beyond float32's range"),
        ("[1e39" + ", 0" * 383 + "]", "text features contain NaN, infinity or numbers beyond float32's range"),
        ("[1, 2]", "text features must be a list of 384 numbers, got 2"),
    ],
)
def test_unusable_feature_vectors_are_a_422_naming_the_problem(client, features: str, message: str) -> None:
    response = client.post(SEARCH, content=f'{{"features": {features}}}', headers=KEY)
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
    assert response.json() == {"type": "about:blank", "title": "Unprocessable Entity", "status": 422, "detail": message}


def test_the_docs_still_describe_the_search_bodies(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, query in [(SEARCH, "TextQuery"), ("/v1/search/image-to-text", "ImageQuery")]:
        operation = paths[path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(f"/{query}")
        ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith("/SearchResponse")
