"""Probes and metrics: /health/live, /health/ready, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import LifecycleDep, MetricsDep, WorkDep

router = APIRouter()


@router.get("/health/live", summary="The process is up")
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", summary="Engine loaded and warm, not draining (503 otherwise)")
async def ready(lifecycle: LifecycleDep, work: WorkDep) -> JSONResponse:
    reason = lifecycle.not_ready_reason()
    if reason:
        return JSONResponse({"status": "not ready", "error": reason}, status_code=503)
    return JSONResponse(
        {"status": "ready", "engine": lifecycle.engine_name, "workers": work.workers, "queue_depth": work.depth}
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
