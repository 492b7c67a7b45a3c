"""The OpenAPI document, completed with every rule the server enforces, so that a client generated from
it never sends a request the server then rejects.

FastAPI's schema states what the pydantic models state. The rest depends on the running service and is
added here: ``k`` at most ``max_k``, a batch of at most ``max_batch_items`` items, ``probe`` at most the
served model's buckets, feature vectors of the served bundle's exact length in float32's range, raw text
within ``max_text_chars`` and not blank, an image in base64 not empty and in base64's alphabet, an upload
not empty, the formats below, the 400 FastAPI answers to a body it cannot read, the 413 of a body over
``max_request_bytes``, and the one shape of every error response: problem details (``service.problems``).
The document is rebuilt when the served model changes (hot swap), since its buckets and dimensions are
part of it.

What no keyword of OpenAPI can state, and a client therefore learns only from a 422: that the bytes of an
image decode as an image (PNG, JPEG, …, within ``max_image_pixels``), and, for a bag-of-words bundle, that
a text holds a word of its vocabulary (docs/api_contract.md).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service import problems
from service.schemas import BinaryItemIn, ItemIn, Problem
from service.settings import Settings

FLOAT32_MAX = 3.4028234663852886e38
QUERY_MODALITY = {"TextQuery": "text", "ImageQuery": "image"}
# Formats naming what JSON Schema cannot state: a decodable image file (base64, or the upload's bytes) and
# a text with a word of the model's vocabulary (when its featurizer has one). A client that generates
# requests from the document gives values for them.
IMAGE_BASE64_FORMAT = "image-base64"
IMAGE_FILE_FORMAT = "binary"
VOCABULARY_TEXT_FORMAT = "vocabulary-text"
BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"  # padded, no line breaks
PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _probe_values(n_buckets: int) -> str:
    """A pattern for the upload form's probe (a form field is a string): empty, 'all' or 1..n_buckets."""
    return "^(all|" + "|".join(str(n) for n in range(n_buckets, 0, -1)) + ")?$"


def _model_limits(
    schema: dict, settings: Settings, dims: dict[str, int] | None, n_buckets: int | None, vocabulary: bool
) -> None:
    components = schema["components"]["schemas"]
    for name, component in components.items():
        properties = component.get("properties", {})
        if "k" in properties:
            properties["k"]["maximum"] = settings.max_k
        probe = properties.get("probe", {})
        if n_buckets is not None and probe.get("type") == "string":  # the upload form's probe
            probe["pattern"] = _probe_values(n_buckets)
        for branch in probe.get("anyOf", []) if n_buckets is not None else []:
            if branch.get("type") == "integer":
                branch["maximum"] = n_buckets
        if name == "BatchRequest":
            properties["items"]["maxItems"] = settings.max_batch_items
        if name in QUERY_MODALITY:  # optional, not nullable: no "default": null beside a non-null type
            for field in properties.values():
                if "default" in field and field["default"] is None and "anyOf" not in field:
                    del field["default"]
            features = properties["features"]
            features["items"].update(minimum=-FLOAT32_MAX, maximum=FLOAT32_MAX)
            if dims is not None:
                features["minItems"] = features["maxItems"] = dims[QUERY_MODALITY[name]]
        if "text" in properties and name == "TextQuery":
            properties["text"].update(minLength=1, maxLength=settings.max_text_chars, pattern=r"\S")
            if vocabulary:
                properties["text"]["format"] = VOCABULARY_TEXT_FORMAT
        if "image_base64" in properties:
            properties["image_base64"].update(minLength=1, pattern=BASE64, format=IMAGE_BASE64_FORMAT)
        if "contentMediaType" in properties.get("image", {}):  # an uploaded file
            properties["image"].update(minLength=1, format=IMAGE_FILE_FORMAT)
    for model in (ItemIn, BinaryItemIn):
        components[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")


def _body_errors(schema: dict, settings: Settings) -> None:
    """The errors of any request body, answered before a route runs: the 400 FastAPI answers to a body
    it cannot read at all (JSON that is not UTF-8, broken multipart: found by the API fuzzer,
    tests/service/test_fuzz_api.py), and the 413 of one over ``max_request_bytes``."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            if "requestBody" in operation:
                operation["responses"].setdefault("400", {"description": "unreadable body"})
                too_large = f"request body larger than {settings.max_request_bytes} bytes"
                operation["responses"].setdefault("413", {"description": too_large})


def _problem_responses(schema: dict) -> None:
    """Every error response as problem details: FastAPI documents its 422 with its own body
    (``HTTPValidationError``), and the routes name only their statuses' meaning."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    response["content"] = {problems.MEDIA_TYPE: {"schema": PROBLEM_REF}}
    components = schema["components"]["schemas"]
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    del problem["properties"]["errors"]["default"]  # optional, never null
    components.update(problem.pop("$defs"), Problem=problem)


def openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The app's OpenAPI document for the model it serves now (without a started runtime, for none)."""
    runtime = getattr(app.state, "runtime", None)
    dims = n_buckets = None
    vocabulary = False
    key: tuple = ()
    if runtime is not None:
        model = runtime.model
        manifest = model.bundle.manifest
        dims = {modality: manifest.modalities.of(modality).input.dim for modality in QUERY_MODALITY.values()}
        n_buckets = model.index.n_buckets
        vocabulary = bool(getattr(manifest.modalities.text.featurizer, "vocabulary", None))
        key = (model.bundle.bundle_id, n_buckets)
    if app.openapi_schema is None or app.state.openapi_key != key:
        app.openapi_schema = None
        schema = FastAPI.openapi(app)
        _body_errors(schema, settings)
        _problem_responses(schema)
        _model_limits(schema, settings, dims, n_buckets, vocabulary)
        app.state.openapi_key = key
    return app.openapi_schema
