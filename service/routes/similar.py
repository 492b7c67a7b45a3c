"""More like this: a stored item's own code is the query, against images or texts.

Nothing is encoded: the item's packed code is read back from the index, so this works for items of
any origin (raw text, image files, feature vectors) and in all four directions, its own modality
(image → images, text → texts) included. The item itself is left out of its own results.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from service.routes.deps import runtime
from service.runtime import Runtime
from service.schemas import Hit, ItemId, Modality, Probe, SearchResponse, Timing

router = APIRouter(prefix="/v1/search", tags=["search"])


class SimilarQuery(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"id": "img:food/fruit/apple", "target": "image", "k": 10}]}
    )
    id: str = ItemId
    target: Modality = Field(description="the modality to search: the item's own, or the other one")
    k: int = Field(default=10, ge=1, description="results to return (at most the server's max_k)")
    probe: Probe = None


@router.post(
    "/similar",
    response_model=SearchResponse,
    responses={
        404: {"description": "no item with this id"},
        422: {"description": "invalid k or probe"},
        503: {"description": "Redis unavailable: results' ids and metadata are read from it"},
    },
)
def similar(query: SimilarQuery, rt: Annotated[Runtime, Depends(runtime)]) -> SearchResponse:
    """Items of ``target`` nearest to the stored item ``id`` by Hamming distance (``timing.encode_ms`` is
    the time to read its stored code)."""
    if query.k > rt.settings.max_k:
        raise HTTPException(422, f"k must be at most {rt.settings.max_k}")
    started = time.perf_counter()
    stored = rt.index.get(query.id)
    code = np.frombuffer(stored.code, dtype=np.uint8)[None]
    lookup_seconds = time.perf_counter() - started
    if query.probe == "all":
        probe = None
    else:  # a probe out of range is the index's 422 (IndexInputError)
        probe = min(rt.settings.default_probe, rt.index.n_buckets) if query.probe is None else query.probe
    started = time.perf_counter()
    [hits] = rt.index.search(query.target, code, query.k + (stored.modality == query.target), probe)
    search_seconds = time.perf_counter() - started
    kept = [h for h in hits if h.id != stored.id][: query.k]
    return SearchResponse(
        results=[Hit(id=h.id, distance=h.distance, bucket=h.bucket, metadata=h.metadata) for h in kept],
        k=query.k,
        probe="all" if probe is None else probe,
        bundle_id=rt.bundle.bundle_id,
        timing=Timing(
            encode_ms=lookup_seconds * 1e3,
            search_ms=search_seconds * 1e3,
            total_ms=(lookup_seconds + search_seconds) * 1e3,
        ),
    )
