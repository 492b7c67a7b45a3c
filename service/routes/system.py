"""The model in service, liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service import demo
from service.routes.deps import runtime
from service.runtime import Runtime

router = APIRouter(tags=["system"])


@router.get("/v1/models")
def models(rt: Annotated[Runtime, Depends(runtime)]) -> dict:
    """The bundle in service (method, code length, inputs, training metrics), the index's buckets, and
    the worker process that answered (each worker holds the index in memory)."""
    manifest = rt.bundle.manifest
    return {
        "bundle_id": rt.bundle.bundle_id,
        "method": manifest["method"],
        "code_bits": manifest["code_bits"],
        "created_at": manifest["created_at"],
        "inputs": {
            modality: {
                "feature_dim": spec["input"]["dim"],
                "featurizer": spec["featurizer"]["kind"],
                "raw_input": spec["featurizer"]["kind"] != "precomputed",
            }
            for modality, spec in manifest["modalities"].items()
        },
        "semantic_index": manifest["semantic_index"],
        "training": {k: manifest["training"][k] for k in ("dataset", "fingerprint", "items")},
        "metrics": manifest["metrics"],
        "index": rt.index.stats(),
        "worker": os.getpid(),
    }


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis unreachable"}})
def readyz(rt: Annotated[Runtime, Depends(runtime)]) -> JSONResponse:
    """Readiness: the bundle is loaded and Redis answers. ``demo_corpus`` is the demo corpus's ingestion
    (state, items done / total per modality); the service answers queries while it runs."""
    redis_ok = rt.index.store.ping()
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
