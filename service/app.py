"""The FastAPI application: routes, error mapping, metrics middleware, offline docs, CORS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from index.errors import IndexInputError, ItemNotFoundError, ModalityConflictError, StoreUnavailableError
from service.encoder import EncodeError
from service.routes import items, search, system
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
        if settings.demo:
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
    for router in (search.router, items.router, system.router):
        app.include_router(router)
    return app


class ObserveMiddleware:
    """Pure ASGI middleware (no per-request task or body copy): refuses bodies over the size limit by
    their Content-Length, and records each request's latency by route, method and status."""

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
        status = 500

        async def record_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            runtime = getattr(scope["app"].state, "runtime", None) if "app" in scope else None
            if runtime is not None:
                route = scope.get("route")
                path = route.path if route is not None else "unmatched"
                runtime.metrics.requests.labels(path, scope["method"], status).observe(time.perf_counter() - started)


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        detail = f"no item with id {exc.args[0]!r}" if isinstance(exc, ItemNotFoundError) else str(exc)
        return _error(status, detail)

    return handle
