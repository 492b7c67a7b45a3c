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

    @app.middleware("http")
    async def observe(request: Request, call_next):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_request_bytes:
            return _error(413, f"request body larger than {settings.max_request_bytes} bytes")
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            path = route.path if route is not None else "unmatched"
            runtime.metrics.requests.labels(path, request.method, response.status_code).observe(
                time.perf_counter() - started
            )
        return response

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


def _handler(status: int):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        detail = f"no item with id {exc.args[0]!r}" if isinstance(exc, ItemNotFoundError) else str(exc)
        return _error(status, detail)

    return handle
