"""Items: batch ingestion (idempotent by id), read and delete. Writes need the API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from service import thumbnails
from service.ingest import ingest_batch
from service.routes.deps import require_writer, runtime
from service.routes.fast_json import BODY_FORMAT, MSGPACK, FastJSONRoute, MsgpackRoute
from service.runtime import Runtime
from service.schemas import BatchRequest, BatchResponse, StoredItemOut

router = APIRouter(prefix="/v1/items", tags=["items"], route_class=FastJSONRoute)

WRITE_ERRORS = {
    403: {"description": "missing or wrong X-API-Key"},
    409: {"description": "an id is stored under the other modality (raced in)"},
    503: {"description": "Redis unavailable: nothing was stored"},
}


# The msgpack body: the JSON body's shape (BatchRequest), each item a BinaryItemIn.
MSGPACK_BODY = {"requestBody": {"content": {MSGPACK: {"schema": {"$ref": "#/components/schemas/BatchRequest"}}}}}


def batch(request: BatchRequest, http: Request, rt: Annotated[Runtime, Depends(runtime)]) -> BatchResponse:
    """Ingest up to ``max_batch_items`` items (default 1,000). Each item is an ``ItemIn``: ``id``,
    ``modality`` (image/text), exactly one of ``text`` / ``image_base64`` / ``features``, and
    ``metadata``. Items are validated one by one and get their own status; the accepted ones are stored
    together, atomically, and an id already present is replaced (re-sending a batch is idempotent); the
    answer comes once Redis has them.

    The body is JSON, or msgpack (``Content-Type: application/msgpack``) of the same shape, in which a
    feature vector may be a bin of float32 little-endian numbers (``BinaryItemIn``): about four times
    less to send and nothing to parse per number (docs/ingestion.md)."""
    if len(request.items) > rt.settings.max_batch_items:
        raise HTTPException(422, f"a batch holds at most {rt.settings.max_batch_items} items")
    result = ingest_batch(rt, request.items, binary=http.scope.get(BODY_FORMAT) == "msgpack")
    # The JSON FastAPI would send for ``response_model=BatchResponse`` (the docs keep that model), serialised
    # once: returned as a model, FastAPI would validate its thousand results again first.
    return Response(BatchResponse.__pydantic_serializer__.to_json(result), media_type="application/json")


router.add_api_route(
    ":batch",
    batch,
    methods=["POST"],
    response_model=BatchResponse,
    responses={**WRITE_ERRORS, 422: {"description": "not a batch, or more items than max_batch_items"}},
    dependencies=[Depends(require_writer)],
    openapi_extra=MSGPACK_BODY,
    route_class_override=MsgpackRoute,
)


@router.get(
    "/{item_id:path}",
    response_model=StoredItemOut,
    responses={404: {"description": "no item with this id"}, 503: {"description": "Redis unavailable"}},
)
def get_item(item_id: str, rt: Annotated[Runtime, Depends(runtime)]) -> StoredItemOut:
    """An item as stored: modality, bucket, packed code and metadata."""
    stored = rt.index.get(item_id)
    return StoredItemOut(
        id=stored.id,
        modality=stored.modality,
        bucket=stored.bucket,
        code_hex=stored.code.hex(),
        metadata=stored.metadata,
    )


@router.delete(
    "/{item_id:path}",
    status_code=204,
    responses={404: {"description": "no item with this id"}, **WRITE_ERRORS},
    dependencies=[Depends(require_writer)],
)
def delete_item(item_id: str, rt: Annotated[Runtime, Depends(runtime)]) -> None:
    """Remove an item from the index and from Redis (from the index a rollout keeps beside it too)."""
    modality = rt.index.remove(item_id)
    other = rt.other
    if other is not None:
        other.delete(modality, item_id)
    rt.sources.forget(modality, [item_id])
    thumbnails.forget(rt, item_id)
