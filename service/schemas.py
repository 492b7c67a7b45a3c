"""Request and response bodies of the REST API (pydantic v2), with the examples the docs page shows."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from index.engine import Hit
from index.item_ids import ID_MAX_CHARS, ID_PATTERN

Modality = Literal["image", "text"]
# A 2×2 red PNG: the image example of the docs, one that a client can send as it is.
RED_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGM8ISfHwMDAxMDAwMDAAAANBAEIfXHKZgAAAABJRU5ErkJggg=="
)
Probe = Annotated[
    Annotated[int, Field(ge=1)] | Literal["all"] | None,
    Field(
        description="semantic buckets to scan (at most the model's buckets); 'all' is an exact full scan; "
        "omitted → default"
    ),
]
ItemId = Field(min_length=1, max_length=ID_MAX_CHARS, pattern=ID_PATTERN, examples=["animals/birds/robin_01"])


class Filter(BaseModel):
    """Keep only items whose metadata has these exact key/value pairs."""

    model_config = ConfigDict(extra="forbid")
    metadata: dict[str, str | int | float | bool] = Field(default_factory=dict, examples=[{"category": "animals"}])


class SearchOptions(BaseModel):
    k: int = Field(default=10, ge=1, description="results to return (at most the server's max_k)")
    probe: Probe = None
    filter: Filter | None = None


def _exactly_one_of(*names: str) -> dict:
    """The JSON-schema form of the "exactly one of these fields" rule the models' validators enforce."""
    return {"oneOf": [{"required": [name]} for name in names]}


# A feature is a JSON number: pydantic's lax mode would also take true/false as 1.0/0.0, which the schema forbids.
Feature = Annotated[float, Field(strict=True)]


class _Query(SearchOptions):
    """A query is given either raw (the field named by ``raw_input``) or as a feature vector. Both fields
    are optional but not nullable: a generated client leaves out the one it does not send."""

    raw_input: ClassVar[str]
    features: list[Feature] = Field(default=None, description="precomputed feature vector of the bundle")

    @model_validator(mode="after")
    def _one_input(self) -> _Query:
        if (getattr(self, self.raw_input) is None) == (self.features is None):
            raise ValueError(f"give exactly one of '{self.raw_input}' or 'features'")
        return self


class TextQuery(_Query):
    """Exactly one of ``text`` (raw) or ``features`` (the bundle's text feature vector)."""

    raw_input = "text"
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "red apple fruit", "k": 5}], **_exactly_one_of("text", "features")},
    )
    text: str = Field(default=None, description="raw query text")


class ImageQuery(_Query):
    """Exactly one of ``image_base64`` (a PNG/JPEG/… file, base64) or ``features``."""

    raw_input = "image_base64"
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"image_base64": RED_PNG_BASE64, "k": 5}],
            **_exactly_one_of("image_base64", "features"),
        },
    )
    image_base64: str = Field(default=None, description="raw image file, base64-encoded")


class Timing(BaseModel):
    encode_ms: float
    search_ms: float
    total_ms: float


class SearchResponse(BaseModel):
    """The search routes build it with ``model_construct`` from the index's own hits (one hit type, no
    copy, no validation of what the index returned) and serialise it once."""

    results: list[Hit] = Field(
        description="by Hamming distance, nearest first; with the model's re-ranker, by its score, highest first"
    )
    k: int
    probe: int | Literal["all"]
    bundle_id: str
    timing: Timing


class ItemIn(BaseModel):
    """An item to ingest: exactly one of ``text``, ``image_base64`` or ``features``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"id": "txt/apple", "modality": "text", "text": "red apple", "metadata": {"title": "Apple"}}]
        },
    )
    id: str = ItemId
    modality: Modality
    text: str | None = None
    image_base64: str | None = None
    features: list[Feature] | None = None
    metadata: dict = Field(default_factory=dict)


# A feature vector in a msgpack body: msgpack bin of float32 little-endian numbers (4 × the bundle's length
# bytes). Strict: a str is never taken for bytes.
Float32Bytes = Annotated[
    bytes,
    Field(strict=True, description="the feature vector as float32, little-endian: 4 bytes per number"),
]


class BinaryItemIn(ItemIn):
    """An item of a msgpack batch body: an ItemIn whose ``features`` may also be msgpack bin (float32,
    little-endian), which a client writes with ``vector.astype('<f4').tobytes()``."""

    features: Float32Bytes | list[Feature] | None = None


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Typed as plain objects, in the schema too, so one bad item is rejected alone (per-item status)
    # instead of failing the whole request: the request is valid whatever its items hold.
    items: list[dict] = Field(
        min_length=1,
        description="items, each an ItemIn (schema ItemIn; in a msgpack body a BinaryItemIn), validated one by "
        "one: an item that is not one is rejected alone, with its reason in its result",
    )


class ItemResult(BaseModel):
    id: str | None
    status: Literal["stored", "rejected"]
    error: str | None = None


class BatchResponse(BaseModel):
    stored: int
    rejected: int
    results: list[ItemResult]


class StoredItemOut(BaseModel):
    id: str
    modality: Modality
    bucket: int
    code_hex: str = Field(description="packed code, FAISS bit order")
    metadata: dict


class FieldError(BaseModel):
    """One part of a request that does not match its schema."""

    loc: list[str | int] = Field(
        description="where: 'body', 'query', 'path' or 'header', then the field names and list positions",
        examples=[["body", "k"]],
    )
    msg: str = Field(examples=["Input should be greater than or equal to 1"])
    type: str = Field(description="pydantic's error kind", examples=["greater_than_equal"])


class Problem(BaseModel):
    """Every error response (4xx, 5xx): RFC 9457 problem details, media type ``application/problem+json``."""

    type: Literal["about:blank"] = Field(description="the status says what kind of problem it is")
    title: str = Field(description="the status's phrase", examples=["Unprocessable Entity"])
    status: int = Field(ge=400, le=599, examples=[422])
    detail: str = Field(description="what was wrong with this request", examples=["k must be at most 100"])
    errors: list[FieldError] = Field(
        default=None, description="only when the request does not match its schema: each field's problem"
    )
