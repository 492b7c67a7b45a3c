"""The FastAPI application: routes, error mapping, metrics middleware, offline docs, CORS."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, nullcontext

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from index.errors import IndexInputError, ItemNotFoundError, ModalityConflictError, StoreUnavailableError
from service import contract
from service.encoder import EncodeError
from service.routes import items, models, page, search, similar, system, thumbnails
from service.runtime import Runtime
from service.settings import Settings

DESCRIPTION = """Search images with text and text with images through learned binary hash codes.

A query is encoded by the model bundle's hash function, routed to its nearest semantic buckets
(binary centers, Hamming distance over the head bits), and ranked by Hamming distance inside them.
Write endpoints need the `X-API-Key` header."""


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def create_app(settings: Settings | None = None) -> FastAPIOffline:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPIOffline) -> AsyncIterator[None]:
        app.state.runtime = Runtime.start(settings)
        if settings.demo_corpus:
            from service.demo import start_demo_ingestion

            start_demo_ingestion(app.state.runtime)
        yield
        app.state.runtime.stop()

    app = FastAPIOffline(title="xmhash", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])

    app.add_middleware(ObserveMiddleware, max_request_bytes=settings.max_request_bytes)

    handlers = {
        EncodeError: 422,
        IndexInputError: 422,
        ModalityConflictError: 409,
        ItemNotFoundError: 404,
        StoreUnavailableError: 503,
    }
    for exception, status in handlers.items():
        app.add_exception_handler(exception, _handler(status))
    app.add_exception_handler(RequestValidationError, _invalid_request)
    for router in (search.router, similar.router, items.router, thumbnails.router, system.router, models.router):
        app.include_router(router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = lambda: contract.openapi(app, settings)
    return app


def _leaf_routes(routes: list) -> Iterator:
    """Every route, those of included routers too (FastAPI wraps each in one with an ``original_router``)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _leaf_routes(included.routes) if included is not None else [route]


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's answer, except that a 405 lists in ``Allow`` the methods of every route of the path:
    Starlette names only those of the first route it matched (GET of ``/v1/items/{id}``, not DELETE)."""
    if exc.status_code == 405:
        allowed = set()
        for route in _leaf_routes(request.app.router.routes):
            match, _ = route.matches({**request.scope, "method": "GET"})
            if match != Match.NONE and getattr(route, "methods", None):
                allowed |= route.methods
        exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(sorted(allowed))})
    return await http_exception_handler(request, exc)


class ObserveMiddleware:
    """Pure ASGI middleware (no per-request task or body copy): refuses bodies over the size limit by
    their Content-Length, or once that many bytes arrived (a chunked body has no Content-Length), pins
    one model per request, and records each request's latency by route, method and status."""

    def __init__(self, app, max_request_bytes: int) -> None:
        self.app = app
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_request_bytes:
            await _error(413, f"request body larger than {self.max_request_bytes} bytes")(scope, receive, send)
            return
        started = time.perf_counter()
        status, received = 500, 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_request_bytes:  # FastAPI re-raises an HTTPException met reading the body
                raise HTTPException(413, f"request body larger than {self.max_request_bytes} bytes")
            return message

        async def record_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
        try:
            with runtime.pinned() if runtime is not None else nullcontext():  # one model for the request
                await self.app(scope, limited_receive, record_status)
        finally:
            if runtime is not None:
                route = scope.get("route")
                path = route.path if route is not None else "unmatched"
                runtime.metrics.requests.labels(path, scope["method"], status).observe(time.perf_counter() - started)


def _encodable(value):
    """An echoed input made JSON-encodable: non-finite floats (a NaN or Infinity literal) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


async def _invalid_request(request: Request, exc: RequestValidationError) -> Response:
    """FastAPI's 422 body, rendered as ASCII JSON with its echoed inputs made encodable: the default
    handler fails to render a NaN literal or a lone surrogate escape (``"\\ud800"``) of the request, a 500
    found by the API fuzzer (tests/service/test_fuzz_api.py)."""
    body = json.dumps({"detail": _encodable(jsonable_encoder(exc.errors()))}, ensure_ascii=True, allow_nan=False)
    return Response(body, status_code=422, media_type="application/json")


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        detail = f"no item with id {exc.args[0]!r}" if isinstance(exc, ItemNotFoundError) else str(exc)
        return _error(status, detail)

    return handle
