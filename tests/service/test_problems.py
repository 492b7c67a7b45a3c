"""Every error the service answers has one shape, RFC 9457 problem details (``application/problem+json``:
``type``, ``title``, ``status``, ``detail``, and ``errors`` naming each field of a request that does not
match its schema), and the OpenAPI document declares that shape for every error response."""

from __future__ import annotations

import re
import uuid
from http import HTTPStatus

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.schemas import RED_PNG_BASE64
from service.settings import DEFAULT_BUNDLE, Settings

KEY = {"X-API-Key": "test-key"}
PROBLEM = "application/problem+json"


def _settings(server, **overrides) -> Settings:
    values = {"redis_url": server.url, "bundle_path": DEFAULT_BUNDLE, "index_name": uuid.uuid4().hex}
    return Settings(**(values | {"api_key": "test-key", "demo_corpus": False} | overrides))


@pytest.fixture(scope="module")
def client(any_redis):
    with TestClient(create_app(_settings(any_redis, max_request_bytes=20_000))) as c:
        yield c


def problem_of(reply, status: int) -> dict:
    """The reply's problem details, checked to be one of that status."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == PROBLEM
    body = reply.json()
    assert body["type"] == "about:blank" and body["status"] == status and isinstance(body["detail"], str)
    assert body["title"] == HTTPStatus(status).phrase  # "Not Found", "Unprocessable Entity", …
    return body


def test_a_request_not_matching_its_schema_names_each_field_with_its_path(client) -> None:
    body = problem_of(client.post("/v1/search/text-to-image", json={"text": "apple", "k": 0, "colour": "red"}), 422)
    by_place = {tuple(error["loc"]): error for error in body["errors"]}
    assert set(by_place) == {("body", "k"), ("body", "colour")}
    assert by_place["body", "k"]["type"] == "greater_than_equal" and "1" in by_place["body", "k"]["msg"]
    assert by_place["body", "colour"]["type"] == "extra_forbidden"
    assert "body.k: Input should be greater than or equal to 1" in body["detail"]  # one line for a person
    assert "input" not in by_place["body", "k"]  # what was sent is not echoed back


def test_many_bad_entries_of_one_field_read_as_one_clause_with_a_count(client) -> None:
    body = problem_of(client.post("/v1/search/text-to-image", json={"features": ["x"] * 384}), 422)
    assert len(body["errors"]) == 384
    assert body["detail"] == "body.features: Input should be a valid number (384 entries, first body.features.0)"


def test_the_services_own_refusals_say_why_in_detail(client) -> None:
    too_many = problem_of(client.post("/v1/search/text-to-image", json={"text": "apple", "k": 101}), 422)
    assert too_many["detail"] == "k must be at most 100" and "errors" not in too_many
    unknown = problem_of(client.post("/v1/search/similar", json={"id": "img:none", "target": "image"}), 404)
    assert unknown["detail"] == "no item with id 'img:none'"
    keyless = problem_of(client.delete("/v1/items/a"), 403)
    assert "X-API-Key" in keyless["detail"]
    empty = problem_of(client.post("/v1/search/image-to-text/upload", files={"image": ("x.png", b"")}), 422)
    assert empty["detail"] == "image is empty"


def test_the_routers_404_and_405_and_an_oversized_body_are_problems_too(client) -> None:
    assert problem_of(client.get("/v1/nothing-here"), 404)["detail"] == "nothing at /v1/nothing-here"
    assert problem_of(client.get("/static/missing.css"), 404)["detail"] == "nothing at /static/missing.css"
    wrong_method = client.put("/v1/items/anything")
    assert problem_of(wrong_method, 405)["detail"] == "PUT is not allowed on /v1/items/anything: it takes DELETE, GET"
    assert wrong_method.headers["allow"] == "DELETE, GET"
    big = client.post("/v1/search/text-to-image", content=b"[" + b"0," * 20_000 + b"0]")
    assert problem_of(big, 413)["detail"] == "request body larger than 20000 bytes"
    unreadable = client.post(
        "/v1/search/image-to-text/upload", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}
    )
    assert problem_of(unreadable, 400)["detail"]


def test_not_ready_is_a_503_problem_that_still_names_the_bundle_and_redis(client, monkeypatch) -> None:
    monkeypatch.setattr(client.app.state.runtime.index, "ping", lambda: False)
    reply = client.get("/readyz")
    body = problem_of(reply, 503)
    assert body["detail"] == "Redis is unreachable or failing over" and body["redis"] == "unreachable"
    assert reply.headers["retry-after"] == "1"  # every 503 says when to try again
    assert body["bundle"] == client.app.state.runtime.bundle.bundle_id


def test_an_unexpected_failure_is_a_500_problem_that_tells_nothing_of_the_exception(any_redis, monkeypatch) -> None:
    with TestClient(create_app(_settings(any_redis)), raise_server_exceptions=False) as client:
        monkeypatch.setattr(client.app.state.runtime.index, "stats", lambda: 1 / 0)
        body = problem_of(client.get("/v1/models"), 500)
    assert "ZeroDivision" not in body["detail"] and "division" not in body["detail"]


def test_the_openapi_document_declares_problem_details_for_every_error_response(client) -> None:
    schema = client.get("/openapi.json").json()
    errors = {
        (method, path, status): response
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        for status, response in operation["responses"].items()
        if status >= "400"
    }
    assert len(errors) > 40
    for where, response in errors.items():
        assert response["content"] == {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}, where
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components  # FastAPI's own 422 body is not what the service answers
    problem = components["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    assert problem["properties"]["errors"]["items"] == {"$ref": "#/components/schemas/FieldError"}
    assert set(components["FieldError"]["required"]) == {"loc", "msg", "type"}
    assert {"400", "413", "422"} <= set(schema["paths"]["/v1/items:batch"]["post"]["responses"])


def test_an_empty_image_base64_is_refused_by_the_schema_as_by_the_service(client) -> None:
    image_base64 = client.get("/openapi.json").json()["components"]["schemas"]["ImageQuery"]["properties"][
        "image_base64"
    ]
    assert image_base64["minLength"] == 1  # as the text's: an empty input is no query
    base64 = re.compile(image_base64["pattern"])  # base64's alphabet, padded
    assert base64.fullmatch(RED_PNG_BASE64) and not base64.fullmatch("a PNG?") and not base64.fullmatch("QUJD=")
    for path in ("/v1/search/image-to-text", "/v1/search/image-to-image"):
        assert problem_of(client.post(path, json={"image_base64": ""}), 422)["detail"] == "image is empty"
