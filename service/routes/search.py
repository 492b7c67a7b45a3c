"""Search in all four directions (text → images, image → texts, text → texts, image → images), from raw
input or feature vectors: one body shape per query modality (``TextQuery``, ``ImageQuery``, the upload
form), the same for either target, and one response shape.

One request's path: the query body is validated by its schema (``k`` ≥ 1, one input); the route reads
the pinned model once (:attr:`Runtime.model`), checks ``k`` against ``max_k``, turns the input into
feature vectors (the encoder checks their shape and finiteness; a raw input awaits its micro-batch's
encoder call, ``service.micro_batch``, while the event loop serves other requests), encodes them with
the bundle, and asks
the model's index, which checks ``probe`` against its buckets, ranks in memory, applies the metadata
filter and returns its :class:`~index.engine.Hit` list (ids and metadata read from Redis in one round
trip a round); the response carries those hits as they are, serialised once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from index.engine import Hit
from service.encoder import CodedQuery, Encoder
from service.routes.deps import runtime
from service.routes.fast_json import FastJSONRoute
from service.runtime import Model, Runtime
from service.schemas import ImageQuery, SearchOptions, SearchResponse, TextQuery, Timing

router = APIRouter(prefix="/v1/search", tags=["search"], route_class=FastJSONRoute)

ERRORS = {
    422: {"description": "invalid query: bad input, empty text, undecodable image, k/probe"},
    503: {"description": "Redis unavailable: results' ids and metadata are read from it"},
}


class StepTimer:
    """Seconds spent in each named step of one request (``code``, ``search``), for the response's timing
    and the metrics."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


async def search_request(rt: Runtime, source: str, target: str, options: SearchOptions, **query_input) -> Response:
    """One query of ``source`` against the items of ``target``, on one pinned model, in three steps: code the
    query, search the index, respond. ``query_input``: ``features``, ``text`` or ``image`` (bytes)."""
    if options.k > rt.settings.max_k:
        raise HTTPException(422, f"k must be at most {rt.settings.max_k}")
    model, timer = rt.model, StepTimer()
    with timer.step("code"):
        coded = await code_query(model.encoder, source, query_input)
    with timer.step("search"):
        hits, probe = search_index(rt, model, coded, target, options)
    rt.metrics.encode.labels(source, coded.kind).observe(timer.seconds["code"])
    rt.metrics.search.labels(target).observe(timer.seconds["search"])
    return respond(model, hits, options.k, probe, timer)


async def code_query(encoder: Encoder, source: str, query_input: dict) -> CodedQuery:
    """The query's code: an image decoded in a worker thread (tens of milliseconds), a raw input's features
    awaited from its micro-batch, then its code from a hash function run shared with this loop turn's queries."""
    if "image" in query_input:
        pending, kind = await run_in_threadpool(encoder.query_features, source, **query_input)
    else:
        pending, kind = encoder.query_features(source, **query_input)
    x = pending.result() if pending.done() else await asyncio.wrap_future(pending)
    return await encoder.code(source, x, kind)


def search_index(
    rt: Runtime, model: Model, coded: CodedQuery, target: str, options: SearchOptions
) -> tuple[list[Hit], int | None]:
    """Route, scan, re-rank, resolve (and filter): the hits and the probe used (None: every bucket)."""
    if options.probe == "all":
        probe = None
    else:  # the index refuses a probe outside its buckets
        probe = min(rt.settings.default_probe, model.index.n_buckets) if options.probe is None else options.probe
    where = options.filter.metadata if options.filter else None
    on_ties = functools.partial(rt.metrics.observe_ties, target)
    [hits] = model.index.search(target, coded.code, options.k, probe, where, query_real=coded.real, on_ties=on_ties)
    return hits, probe


def respond(model: Model, hits: list[Hit], k: int, probe: int | None, timer: StepTimer) -> Response:
    """The ``SearchResponse`` JSON FastAPI would send for ``response_model=SearchResponse`` (the docs keep that
    model), serialised once: returned as a model, FastAPI would validate it again first."""
    code, search = timer.seconds["code"], timer.seconds["search"]
    result = SearchResponse.model_construct(
        results=hits,
        k=k,
        probe="all" if probe is None else probe,
        bundle_id=model.bundle.bundle_id,
        timing=Timing.model_construct(encode_ms=code * 1e3, search_ms=search * 1e3, total_ms=(code + search) * 1e3),
    )
    return Response(SearchResponse.__pydantic_serializer__.to_json(result), media_type="application/json")


def _query_input(source: str, query: TextQuery | ImageQuery) -> dict:
    """The one input a JSON query body holds, as ``Encoder.code_query`` takes it."""
    if query.features is not None:
        return {"features": query.features}
    if source == "text":
        return {"text": query.text}
    return {"image": Encoder.decode_base64(query.image_base64)}


async def _search(rt: Runtime, source: str, target: str, query: TextQuery | ImageQuery) -> Response:
    return await search_request(rt, source, target, query, **_query_input(source, query))


async def _upload_search(rt: Runtime, target: str, image: UploadFile, k: int, probe: str) -> Response:
    try:
        options = SearchOptions(k=k, probe=None if probe == "" else ("all" if probe == "all" else int(probe)))
    except ValueError as exc:
        raise HTTPException(422, f"probe must be a number or 'all': {exc}") from exc
    data = await image.read(rt.settings.max_image_bytes + 1)
    return await search_request(rt, "image", target, options, image=data)


# Queries run on the event loop: their CPU besides the featurizer (the hash function, a scan, one Redis
# round trip for the results' ids) is a few milliseconds at most, and handing them to a worker thread
# measured no better at 1 M items (docs/results_pretrained.md, "Speed"); a raw input's featurizer runs
# on its micro-batcher's thread, awaited, and decoding an image (tens of milliseconds) on a worker
# thread. The JSON endpoints take the runtime from the request instead of Depends(runtime): FastAPI's
# solving of a sub-dependency costs ~40 µs a request.
@router.post("/text-to-image", response_model=SearchResponse, responses=ERRORS)
async def text_to_image(query: TextQuery, request: Request) -> Response:
    """Find images for a text: raw ``text`` (featurized by the model's vocabulary) or ``features``."""
    return await _search(request.app.state.runtime, "text", "image", query)


@router.post("/text-to-text", response_model=SearchResponse, responses=ERRORS)
async def text_to_text(query: TextQuery, request: Request) -> Response:
    """Find texts like a text: the same body as ``text-to-image``, searched among the texts."""
    return await _search(request.app.state.runtime, "text", "text", query)


@router.post("/image-to-text", response_model=SearchResponse, responses=ERRORS)
async def image_to_text(query: ImageQuery, request: Request) -> Response:
    """Find texts for an image: a base64 image file (``image_base64``) or ``features``."""
    return await _search(request.app.state.runtime, "image", "text", query)


@router.post("/image-to-image", response_model=SearchResponse, responses=ERRORS)
async def image_to_image(query: ImageQuery, request: Request) -> Response:
    """Find images like an image: the same body as ``image-to-text``, searched among the images."""
    return await _search(request.app.state.runtime, "image", "image", query)


UploadedImage = Annotated[UploadFile, File(description="the image file (PNG, JPEG, GIF, …), not empty")]
UploadK = Annotated[int, Form(ge=1, description="results to return (at most the server's max_k)")]
UploadProbe = Annotated[str, Form(description="buckets to scan, or 'all'; empty → default")]


@router.post("/image-to-text/upload", response_model=SearchResponse, responses=ERRORS)
async def image_to_text_upload(
    rt: Annotated[Runtime, Depends(runtime)], image: UploadedImage, k: UploadK = 10, probe: UploadProbe = ""
) -> Response:
    """Find texts for an uploaded image (multipart form)."""
    return await _upload_search(rt, "text", image, k, probe)


@router.post("/image-to-image/upload", response_model=SearchResponse, responses=ERRORS)
async def image_to_image_upload(
    rt: Annotated[Runtime, Depends(runtime)], image: UploadedImage, k: UploadK = 10, probe: UploadProbe = ""
) -> Response:
    """Find images like an uploaded image (multipart form): the same form as ``image-to-text/upload``."""
    return await _upload_search(rt, "image", image, k, probe)
