"""Fuzzing the REST API with schemathesis, from the service's own OpenAPI schema.

The app runs in process (schemathesis' ASGI transport, lifespan included) on the committed default
model and a real redis-server, with an API key that every generated request carries, so the write
operations (batch ingest, delete, model swap) run for real. Every operation gets generated requests,
valid by its schema and, where an input can be invalid, invalid ones; a stateful run chains them
through OpenAPI links (batch ingest → read / delete the first id it answered). Every response must
pass: no 5xx, a documented status code, the documented content type and headers, and a body that
conforms to the documented schema. Targeted runs cover what the schema cannot steer the generator
to: feature vectors of the bundle's exact dimensions, and JSON literals no schema describes.

schemathesis' own pytest integration (``from_fixture(...).parametrize()``) fails on pytest 9
(``Function._nodeid``), so each operation's strategy runs under a plain Hypothesis ``@given``.
"""

from __future__ import annotations

import base64
import io
import uuid
from collections import Counter

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import DEFAULT_BUNDLE, Settings

KEY = {"X-API-Key": "fuzz-key"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
SEEDED = 40  # items per modality stored before fuzzing, so searches return hits whose schema is checked
DIMS = {"image": 1280, "text": 384}  # the default bundle's feature dimensions
COMMON = {"deadline": None, "suppress_health_check": list(HealthCheck)}
FUZZ_SETTINGS = settings(max_examples=30, **COMMON)  # per operation and mode
STATEFUL_SETTINGS = settings(max_examples=15, stateful_step_count=6, **COMMON)
# Long feature vectors: no shrinking (slow on 384- and 1280-number lists); a failure prints its request.
FEATURE_SETTINGS = settings(max_examples=40, phases=[Phase.explicit, Phase.reuse, Phase.generate], **COMMON)
REQUESTS: Counter[tuple[str, int]] = Counter()  # (operation, status) of every fuzzed request


def _png(seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _seed_items(client) -> None:
    rng = np.random.default_rng(0)
    words = ["red", "apple", "car", "tree", "bird", "house", "blue", "green", "sun", "flower", "cat", "dog"]
    items = [
        {"id": f"seed/txt{i}", "modality": "text", "text": " ".join(rng.choice(words, 3)), "metadata": {"n": i}}
        for i in range(SEEDED)
    ]
    items += [{"id": f"seed/img{i}", "modality": "image", "image_base64": _png(i)} for i in range(SEEDED)]
    response = client.post("/v1/items:batch", json={"items": items}, headers=KEY)
    assert response.status_code == 200 and response.json()["stored"] == 2 * SEEDED, response.text


def _with_links(schema: dict) -> dict:
    """OpenAPI links from a batch ingest to reading and deleting the first id it answered."""
    get_id = schema["paths"]["/v1/items/{item_id}"]["get"]["operationId"]
    delete_id = schema["paths"]["/v1/items/{item_id}"]["delete"]["operationId"]
    parameters = {"path.item_id": "$response.body#/results/0/id"}
    schema["paths"]["/v1/items:batch"]["post"]["responses"]["200"]["links"] = {
        "GetStoredItem": {"operationId": get_id, "parameters": parameters},
        "DeleteStoredItem": {"operationId": delete_id, "parameters": parameters},
    }
    return schema


def _report() -> str:
    by_status: Counter[int] = Counter()
    for (_, status), n in REQUESTS.items():
        by_status[status] += n
    lines = [f"fuzzed requests: {sum(REQUESTS.values())}; by status: {dict(sorted(by_status.items()))}"]
    for operation in sorted({op for op, _ in REQUESTS}):
        counts = {status: n for (op, status), n in sorted(REQUESTS.items()) if op == operation}
        lines.append(f"  {operation}: {counts}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def app(any_redis, tmp_path_factory: pytest.TempPathFactory):
    """The app, started (lifespan) by schemathesis' ASGI client, with seeded items. Its models
    directory holds the default bundle as ``default`` (the swap operation's example)."""
    models = tmp_path_factory.mktemp("models")
    (models / "default").symlink_to(DEFAULT_BUNDLE)
    application = create_app(
        Settings(
            redis_url=any_redis.url,
            bundle_path=DEFAULT_BUNDLE,
            models_dir=models,
            index_name=f"fuzz-{uuid.uuid4().hex[:12]}",
            api_key=KEY["X-API-Key"],
        )
    )
    with asgi.get_client(application) as client:
        _seed_items(client)
    yield application
    asgi.shutdown_lifespans()
    print(f"\n{_report()}")  # shown with `pytest -s`: the numbers of docs/reliability.md


@pytest.fixture(scope="module")
def api_schema(app):
    schema = schemathesis.openapi.from_dict(_with_links(app.openapi()))
    schema.app = app  # requests go to the app in process (ASGI transport)
    return schema


def _operations() -> list[tuple[str, str, GenerationMode]]:
    """(method, path, mode) to fuzz: every operation with schema-valid data, and with schema-invalid
    data where an input can be invalid (a body, or the API key header); the other operations take no
    input the schema constrains. Building the app needs no Redis."""
    spec = create_app(Settings(redis_url="redis://127.0.0.1:1/0", api_key="unused")).openapi()
    cases = []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            cases.append((method.upper(), path, GenerationMode.POSITIVE))
            if "requestBody" in operation or "security" in operation:
                cases.append((method.upper(), path, GenerationMode.NEGATIVE))
    return cases


OPERATIONS = _operations()
VALID = [(method, path) for method, path, mode in OPERATIONS if mode is GenerationMode.POSITIVE]
INVALID = [(method, path) for method, path, mode in OPERATIONS if mode is GenerationMode.NEGATIVE]


def _fuzz(api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @FUZZ_SETTINGS
    def fuzz(case) -> None:
        response = case.call_and_validate(headers=KEY, checks=CHECKS)
        REQUESTS[(f"{method} {path}", response.status_code)] += 1

    fuzz()


@pytest.mark.parametrize(("method", "path"), VALID, ids=[f"{m} {p} positive" for m, p in VALID])
def test_every_operation_answers_without_5xx_and_as_documented(api_schema, method, path) -> None:
    _fuzz(api_schema, method, path, GenerationMode.POSITIVE)


# Refused by validation before the index is reached: against the plain redis-server only.
@pytest.mark.parametrize("any_redis", ["redis"], indirect=True, scope="module")
@pytest.mark.parametrize(("method", "path"), INVALID, ids=[f"{m} {p} negative" for m, p in INVALID])
def test_every_operation_refuses_invalid_requests_without_5xx_and_as_documented(api_schema, method, path) -> None:
    _fuzz(api_schema, method, path, GenerationMode.NEGATIVE)


def test_stateful_sequences_answer_without_5xx_and_as_documented(api_schema) -> None:
    class Machine(api_schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"headers": KEY}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            REQUESTS[(f"{case.method} {case.path} (stateful)", response.status_code)] += 1
            case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs or None)

    Machine.run(settings=STATEFUL_SETTINGS)


def test_the_fuzzed_schema_has_every_operation(api_schema) -> None:
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in api_schema.get_all_operations()}
    assert {"POST /v1/models:swap", "POST /v1/items:batch", "DELETE /v1/items/{item_id}"} <= operations
    assert {"POST /v1/search/similar", "GET /v1/thumbnails/{item_id}"} <= operations  # the search page's routes
    assert {"POST /v1/search/text-to-text", "POST /v1/search/image-to-image"} <= operations  # same modality
    assert len(operations) == len({(m, p) for m, p, _ in OPERATIONS}) == 20, operations


finite_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(source=st.sampled_from(["text", "image"]), ingest=st.booleans(), data=st.data())
@FEATURE_SETTINGS
def test_feature_vectors_of_the_bundles_dimensions_never_5xx(api_schema, source, ingest, data) -> None:
    """Any finite JSON numbers, at any positions of a vector of the right length: a 2xx or a 4xx."""
    entries = data.draw(st.dictionaries(st.integers(0, DIMS[source] - 1), finite_floats, max_size=12), label="entries")
    vector = [entries.get(j, 0.0) for j in range(DIMS[source])]
    if ingest:
        operation = api_schema["/v1/items:batch"]["POST"]
        body = {"items": [{"id": f"fuzz/features/{source}", "modality": source, "features": vector}]}
    else:
        path = "/v1/search/text-to-image" if source == "text" else "/v1/search/image-to-text"
        operation = api_schema[path]["POST"]
        body = {"features": vector, "k": 5, "probe": "all"}
    case = operation.Case(body=body, media_type="application/json")
    response = case.call_and_validate(headers=KEY, checks=CHECKS)
    REQUESTS[(f"POST {operation.path} (features)", response.status_code)] += 1


# Python's JSON parser takes NaN / Infinity literals, numbers that overflow to infinity and lone
# surrogate escapes (not Unicode): no schema describes them, and each failed some response path.
NOT_JSON_SAFE = ["NaN", "Infinity", "-Infinity", "1e999", '"\\ud800"', '"a\\udc80b"', '"\\udfff\\ud800"']


def _bodies(token: str) -> dict[str, list[str]]:
    text_features = "[" + ",".join(["0"] * 874 + ["1"]) + "]"
    key = token if token.startswith('"') else '"k"'
    return {
        "/v1/search/text-to-image": [
            f'{{"text": "apple", "k": {token}}}',
            f'{{"text": {token}}}',
            f'{{"text": "apple", "filter": {{"metadata": {{"a": {token}, {key}: 1}}}}}}',
        ],
        "/v1/search/image-to-text": [f'{{"image_base64": {token}}}', f'{{"features": [{token}]}}'],
        "/v1/items:batch": [
            f'{{"items": [{{"id": {token}, "modality": "text", "text": "apple"}}]}}',
            f'{{"items": [{{"id": "poison/meta", "modality": "text", "features": {text_features}, '
            f'"metadata": {{"m": {token}, {key}: 1}}}}]}}',
            f'{{"items": [{{"id": "poison/text", "modality": "text", "text": {token}}}]}}',
        ],
        "/v1/models:swap": [f'{{"bundle": {token}}}'],
    }


@pytest.mark.parametrize("token", NOT_JSON_SAFE)
def test_json_no_schema_describes_never_5xx_nor_poisons_later_reads(app, token) -> None:
    """Whatever a route makes of such a body, its answer is a valid JSON 2xx/4xx, and what it stored
    stays readable and searchable."""
    with asgi.get_client(app) as client:
        for path, bodies in _bodies(token).items():
            for body in bodies:
                response = client.post(path, data=body.encode(), headers={**KEY, "content-type": "application/json"})
                REQUESTS[(f"POST {path} (NaN/surrogate)", response.status_code)] += 1
                assert response.status_code < 500, (path, body[:200], response.status_code, response.text)
                response.json()
        for item in ("poison/meta", "poison/text"):
            response = client.get(f"/v1/items/{item}")
            assert response.status_code in (200, 404), (item, response.status_code, response.text)
        features = [0.0] * (DIMS["text"] - 1) + [1.0]
        search = client.post("/v1/search/text-to-image", json={"features": features, "k": 100, "probe": "all"})
        assert search.status_code == 200, search.text
