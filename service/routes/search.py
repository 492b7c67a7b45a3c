"""Cross-modal search: text → images and image → texts, from raw input or feature vectors.

One request's path: the query body is validated by its schema (``k`` ≥ 1, one input); the route reads
the pinned model once (:attr:`Runtime.model`), checks ``k`` against ``max_k``, turns the input into
feature vectors (the encoder checks their shape and finiteness), encodes them with the bundle, and asks
the model's index, which checks ``probe`` against its buckets and returns its :class:`~index.engine.Hit`
list; the response carries those hits as they are, serialised once.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from index.engine import Hit
from service.routes.deps import runtime
from service.routes.fast_json import FastJSONRoute
from service.runtime import Model, Runtime
from service.schemas import ErrorBody, ImageQuery, SearchOptions, SearchResponse, TextQuery, Timing

router = APIRouter(prefix="/v1/search", tags=["search"], route_class=FastJSONRoute)

# A metadata filter fetches this many times k, and again as many times more until k hits match or the
# index runs out: a few rounds even for rare matches, without scanning for k·(everything) up front.
FILTER_OVERFETCH = 4

ERRORS = {
    422: {
        "model": ErrorBody,
        "description": "invalid query: bad input, empty text, undecodable image, k/probe",
    },
    503: {"model": ErrorBody, "description": "Redis unavailable"},
}


def _matches(metadata: dict, wanted: dict) -> bool:
    return all(metadata.get(key) == value for key, value in wanted.items())


def _nearest(model: Model, target: str, code: np.ndarray, k: int, probe: int | None, wanted: dict) -> list[Hit]:
    """The index's top k for one code, keeping only hits whose metadata matches ``wanted``."""
    if not wanted:
        return model.index.search(target, code, k, probe)[0]
    fetch = k * FILTER_OVERFETCH
    while True:
        [hits] = model.index.search(target, code, fetch, probe)
        kept = [h for h in hits if _matches(h.metadata, wanted)]
        if len(kept) >= k or len(hits) < fetch:
            return kept[:k]
        fetch *= FILTER_OVERFETCH


def run_search(
    rt: Runtime,
    model: Model,
    source: str,
    features: np.ndarray,
    options: SearchOptions,
    encode_seconds: float,
    kind: str,
) -> Response:
    """Encode → route → scan → (filter) for one query, answered as ``SearchResponse`` JSON."""
    if options.k > rt.settings.max_k:
        raise HTTPException(422, f"k must be at most {rt.settings.max_k}")
    started = time.perf_counter()
    code = model.encoder.packed(source, features)
    encode_seconds += time.perf_counter() - started
    target = "image" if source == "text" else "text"
    if options.probe == "all":
        probe = None
    else:  # the index refuses a probe outside its buckets
        probe = min(rt.settings.default_probe, model.index.n_buckets) if options.probe is None else options.probe
    started = time.perf_counter()
    hits = _nearest(model, target, code, options.k, probe, options.filter.metadata if options.filter else {})
    search_seconds = time.perf_counter() - started
    rt.metrics.encode.labels(source, kind).observe(encode_seconds)
    rt.metrics.search.labels(target).observe(search_seconds)
    result = SearchResponse.model_construct(
        results=hits,
        k=options.k,
        probe="all" if probe is None else probe,
        bundle_id=model.bundle.bundle_id,
        timing=Timing.model_construct(
            encode_ms=encode_seconds * 1e3,
            search_ms=search_seconds * 1e3,
            total_ms=(encode_seconds + search_seconds) * 1e3,
        ),
    )
    # The JSON FastAPI would send for ``response_model=SearchResponse`` (the docs keep that model), serialised
    # once: returned as a model, FastAPI would validate it again first.
    return Response(SearchResponse.__pydantic_serializer__.to_json(result), media_type="application/json")


def _search(rt: Runtime, source: str, query: TextQuery | ImageQuery) -> Response:
    """Features as given, or from the raw input, then the shared search path, all on one pinned model."""
    started = time.perf_counter()
    model = rt.model
    encoder = model.encoder
    if query.features is not None:
        features, kind = encoder.features(source, query.features), "features"
    elif source == "text":
        features, kind = encoder.text_features(query.text, require_known_words=True), "raw"
    else:
        features, kind = encoder.image_features(encoder.decode_base64(query.image_base64)), "raw"
    return run_search(rt, model, source, features, query, time.perf_counter() - started, kind)


# Text and feature-vector queries cost well under a millisecond of CPU, so they run on the event loop
# (a worker-thread hop would cost about as much); decoding an image takes milliseconds, so it does not.
# For the same reason the JSON endpoints take the runtime from the request instead of Depends(runtime):
# FastAPI's solving of a sub-dependency costs ~40 µs a request.


@router.post("/text-to-image", response_model=SearchResponse, responses=ERRORS)
async def text_to_image(query: TextQuery, request: Request) -> Response:
    """Find images for a text: raw ``text`` (featurized by the model's vocabulary) or ``features``."""
    return _search(request.app.state.runtime, "text", query)


@router.post("/image-to-text", response_model=SearchResponse, responses=ERRORS)
async def image_to_text(query: ImageQuery, request: Request) -> Response:
    """Find texts for an image: a base64 image file (``image_base64``) or ``features``."""
    rt = request.app.state.runtime
    if query.features is not None:
        return _search(rt, "image", query)
    return await run_in_threadpool(_search, rt, "image", query)


@router.post("/image-to-text/upload", response_model=SearchResponse, responses=ERRORS)
def image_to_text_upload(
    rt: Annotated[Runtime, Depends(runtime)],
    image: Annotated[UploadFile, File(description="the image file (PNG, JPEG, GIF, …)")],
    k: Annotated[int, Form(ge=1)] = 10,
    probe: Annotated[str | None, Form(description="buckets to scan, or 'all'")] = None,
) -> Response:
    """Find texts for an uploaded image (multipart form)."""
    started = time.perf_counter()
    model = rt.model
    features = model.encoder.image_features(image.file.read(rt.settings.max_image_bytes + 1))
    try:
        parsed = SearchOptions(k=k, probe=None if probe in (None, "") else ("all" if probe == "all" else int(probe)))
    except ValueError as exc:
        raise HTTPException(422, f"probe must be a number or 'all': {exc}") from exc
    return run_search(rt, model, "image", features, parsed, time.perf_counter() - started, "raw")
