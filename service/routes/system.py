"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service import demo, problems
from service.routes.deps import runtime
from service.runtime import Runtime

router = APIRouter(tags=["system"])


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers. Answered on the event loop: no hop to the thread pool and back for
    the request a load balancer or a probe sends most often."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=None,
    responses={503: {"description": "Redis unreachable or failing over (problem details: bundle, redis)"}},
)
def readyz(rt: Annotated[Runtime, Depends(runtime)]) -> dict | Response:
    """Readiness: the bundle is loaded, Redis answers and the index follows its primary, named in
    ``primary`` (host:port; in Sentinel mode the one the sentinels name, which changes with a failover; on a
    Redis Cluster each shard's master, in shard order, comma-separated).
    ``demo_corpus`` is the demo corpus's ingestion (state, items done / total per modality); the service
    answers queries while it runs. ``rollout`` is the index kept beside the live one (a bundle being
    prepared, or kept for rollback) and its pass. Not ready: a 503 problem that says the same (``bundle``,
    ``redis``), which a load balancer's health check takes the replica out on."""
    index = rt.index
    if not index.ping():
        return problems.problem(503, "Redis is unreachable or failing over", bundle=rt.bundle.bundle_id,
                                redis="unreachable")  # fmt: skip
    rollout = rt.rollouts.read()
    return {"bundle": rt.bundle.bundle_id, "redis": "ok", "primary": ",".join(p.address for p in index.primaries),
            "demo_corpus": demo.progress(rt), "rollout": None if rollout is None else rollout.as_json()}  # fmt: skip


@router.get("/metrics", response_class=Response)
def metrics(rt: Annotated[Runtime, Depends(runtime)]) -> Response:
    """Prometheus exposition: request latency, encode vs search time, index size and hash health."""
    for modality, count in rt.index.stats()["items"].items():
        rt.metrics.index_items.labels(modality).set(count)
    rt.metrics.show_rollout(rt.rollouts.read())
    rt.metrics.set_health(rt.index.health())
    return Response(rt.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
