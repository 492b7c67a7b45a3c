"""Cross-modal search: text → images and image → texts, from raw input or feature vectors."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from service.routes.deps import runtime
from service.routes.fast_json import FastJSONRoute
from service.runtime import Runtime
from service.schemas import ErrorBody, Hit, ImageQuery, SearchOptions, SearchResponse, TextQuery, Timing

router = APIRouter(prefix="/v1/search", tags=["search"], route_class=FastJSONRoute)

ERRORS = {
    422: {
        "model": ErrorBody,
        "description": "invalid query: bad input, empty text, undecodable image, k/probe",
    },
    503: {"model": ErrorBody, "description": "Redis unavailable"},
}


def _probe(rt: Runtime, probe: int | Literal["all"] | None) -> int | None:
    if probe == "all":
        return None
    value = min(rt.settings.default_probe, rt.index.n_buckets) if probe is None else probe
    if not 1 <= value <= rt.index.n_buckets:
        raise HTTPException(422, f"probe must be between 1 and {rt.index.n_buckets}, or 'all'")
    return value


def _matches(metadata: dict, wanted: dict) -> bool:
    return all(metadata.get(key) == value for key, value in wanted.items())


def run_search(
    rt: Runtime, source: str, features: np.ndarray, options: SearchOptions, encode_seconds: float, kind: str
) -> Response:
    """Encode → route → scan → (filter) for one query; filters over-fetch until k matches or the end."""
    if options.k > rt.settings.max_k:
        raise HTTPException(422, f"k must be at most {rt.settings.max_k}")
    started = time.perf_counter()
    code = rt.encoder.packed(source, features)
    encode_seconds += time.perf_counter() - started
    target = "image" if source == "text" else "text"
    probe = _probe(rt, options.probe)
    wanted = options.filter.metadata if options.filter else {}
    started = time.perf_counter()
    fetch = options.k if not wanted else options.k * 4
    while True:
        [hits] = rt.index.search(target, code, fetch, probe)
        kept = [h for h in hits if _matches(h.metadata, wanted)]
        if len(kept) >= options.k or len(hits) < fetch:
            break
        fetch *= 4
    search_seconds = time.perf_counter() - started
    rt.metrics.encode.labels(source, kind).observe(encode_seconds)
    rt.metrics.search.labels(target).observe(search_seconds)
    result = SearchResponse(
        results=[Hit(id=h.id, distance=h.distance, bucket=h.bucket, metadata=h.metadata) for h in kept[: options.k]],
        k=options.k,
        probe="all" if probe is None else probe,
        bundle_id=rt.bundle.bundle_id,
        timing=Timing(
            encode_ms=encode_seconds * 1e3,
            search_ms=search_seconds * 1e3,
            total_ms=(encode_seconds + search_seconds) * 1e3,
        ),
    )
    return _json(result)


def _json(result: SearchResponse) -> Response:
    """The JSON FastAPI would send for ``response_model=SearchResponse`` (the docs keep that model), serialised
    once: returned as a model, FastAPI would validate our own model again first (in a worker thread for a
    plain-function endpoint)."""
    return Response(SearchResponse.__pydantic_serializer__.to_json(result), media_type="application/json")


def _search(rt: Runtime, source: str, query: TextQuery | ImageQuery, raw: Callable[[], np.ndarray]) -> Response:
    """Features as given, or from the raw input (``raw``), then the shared search path."""
    started = time.perf_counter()
    if query.features is not None:
        features, kind = rt.encoder.features(source, query.features), "features"
    else:
        features, kind = raw(), "raw"
    return run_search(rt, source, features, query, time.perf_counter() - started, kind)


# Text and feature-vector queries cost well under a millisecond of CPU, so they run on the event loop
# (a worker-thread hop would cost about as much); decoding an image takes milliseconds, so it does not.
# For the same reason the JSON endpoints take the runtime from the request instead of Depends(runtime):
# FastAPI's solving of a sub-dependency costs ~40 µs a request.


@router.post("/text-to-image", response_model=SearchResponse, responses=ERRORS)
async def text_to_image(query: TextQuery, request: Request) -> Response:
    """Find images for a text: raw ``text`` (featurized by the model's vocabulary) or ``features``."""
    rt = await runtime(request)
    return _search(rt, "text", query, lambda: rt.encoder.text_features(query.text, require_known_words=True))


@router.post("/image-to-text", response_model=SearchResponse, responses=ERRORS)
async def image_to_text(query: ImageQuery, request: Request) -> Response:
    """Find texts for an image: a base64 image file (``image_base64``) or ``features``."""
    rt = await runtime(request)
    search = partial(
        _search, rt, "image", query, lambda: rt.encoder.image_features(rt.encoder.decode_base64(query.image_base64))
    )
    return search() if query.features is not None else await run_in_threadpool(search)


@router.post("/image-to-text/upload", response_model=SearchResponse, responses=ERRORS)
def image_to_text_upload(
    rt: Annotated[Runtime, Depends(runtime)],
    image: Annotated[UploadFile, File(description="the image file (PNG, JPEG, GIF, …)")],
    k: Annotated[int, Form(ge=1)] = 10,
    probe: Annotated[str | None, Form(description="buckets to scan, or 'all'")] = None,
) -> Response:
    """Find texts for an uploaded image (multipart form)."""
    started = time.perf_counter()
    data = image.file.read(rt.settings.max_image_bytes + 1)
    features = rt.encoder.image_features(data)
    try:
        parsed = SearchOptions(k=k, probe=None if probe in (None, "") else ("all" if probe == "all" else int(probe)))
    except ValueError as exc:
        raise HTTPException(422, f"probe must be a number or 'all': {exc}") from exc
    return run_search(rt, "image", features, parsed, time.perf_counter() - started, "raw")
