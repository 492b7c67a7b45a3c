"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import demo
from service.routes.deps import runtime
from service.runtime import Runtime

router = APIRouter(tags=["system"])


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
def readyz(rt: Annotated[Runtime, Depends(runtime)]) -> JSONResponse:
    """Readiness: the bundle is loaded and Redis answers. ``demo_corpus`` is the demo corpus's ingestion
    (state, items done / total per modality); the service answers queries while it runs."""
    redis_ok = rt.index.ping()
    body = {"bundle": rt.bundle.bundle_id, "redis": "ok" if redis_ok else "unreachable"}
    if redis_ok:
        body["demo_corpus"] = demo.progress(rt)
    return JSONResponse(body, status_code=200 if redis_ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Prometheus exposition: request latency, encode vs search time, index size."""
    for modality, count in rt.index.stats()["items"].items():
        rt.metrics.index_items.labels(modality).set(count)
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
