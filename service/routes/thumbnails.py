"""Thumbnails of image items (``service.thumbnails``), cacheable by the browser."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Response

from service import thumbnails
from service.routes.deps import runtime
from service.runtime import Runtime

router = APIRouter(tags=["items"])
MAX_AGE_SECONDS = 300  # a re-ingested item shows its new picture within this; the ETag saves the bytes meanwhile


@router.get(
    "/v1/thumbnails/{item_id:path}",
    response_class=Response,
    responses={
        200: {
            "content": {thumbnails.MEDIA_TYPE: {}, "image/svg+xml": {}},
            "description": f"at most {thumbnails.SIZE}×{thumbnails.SIZE} pixels; an SVG placeholder for an "
            "image ingested as features only",
        },
        304: {"description": "unchanged since the ETag sent in If-None-Match"},
        404: {"description": "unknown id, a text item, or no reachable collection file"},
        503: {"description": "Redis unavailable"},
    },
)
def thumbnail(
    item_id: str,
    rt: Annotated[Runtime, Depends(runtime)],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A small picture of an image item: the thumbnail kept when it was ingested as an image file, or
    one made from the file of a loaded collection its metadata names (only files inside the collection)."""
    stored = rt.index.get(item_id)
    if stored.modality != "image":
        raise HTTPException(404, f"item {item_id!r} is a text item: only image items have thumbnails")
    try:
        body, media_type = thumbnails.thumbnail(rt, item_id, stored.metadata)
    except thumbnails.NoThumbnail as exc:
        raise HTTPException(404, f"item {item_id!r} has no thumbnail: {exc}") from exc
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": f"public, max-age={MAX_AGE_SECONDS}"}
    if if_none_match == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
