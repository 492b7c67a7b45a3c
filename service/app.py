"""The FastAPI application: routes, errors as problem details (``service.problems``), metrics middleware,
offline docs, CORS."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext

from fastapi import HTTPException
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service import contract, model_rollout, problems
from service.routes import items, models, page, search, similar, system, thumbnails
from service.runtime import Runtime
from service.settings import Settings

DESCRIPTION = """Search images with text and text with images through learned binary hash codes.

A query is encoded by the model bundle's hash function, routed to its nearest semantic buckets
(binary centers, Hamming distance over the head bits), and ranked by Hamming distance inside them.
Write endpoints need the `X-API-Key` header."""


def create_app(settings: Settings | None = None) -> FastAPIOffline:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPIOffline) -> AsyncIterator[None]:
        app.state.runtime = Runtime.start(settings)
        model_rollout.resume(app.state.runtime)  # a new default bundle upgrades the index; a killed pass resumes
        if settings.demo_corpus:
            from service.demo import start_demo_ingestion

            start_demo_ingestion(app.state.runtime)
        yield
        app.state.runtime.stop()
        del app.state.runtime  # the app may outlive its run (a test's client): its models' memory must not

    app = FastAPIOffline(title="xmhash", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])

    app.add_middleware(ObserveMiddleware, max_request_bytes=settings.max_request_bytes)

    problems.install(app)
    for router in (search.router, similar.router, items.router, thumbnails.router, system.router, models.router):
        app.include_router(router)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
    app.openapi = lambda: contract.openapi(app, settings)
    return app


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
            too_large = problems.problem(413, f"request body larger than {self.max_request_bytes} bytes")
            await too_large(scope, receive, send)
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
