"""Probes and metrics: /health/live, /health/ready, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.api.deps import LifecycleDep, MetricsDep, SetsDep

router = APIRouter()


@router.get("/health/live", summary="The process is up")
async def live() -> dict:
    return {"status": "live"}


@router.get(
    "/health/ready",
    summary="The model sets warm, the default one loaded (or loading on demand), not draining (503 otherwise)",
)
@router.get("/health", summary="The same as /health/ready")
async def ready(lifecycle: LifecycleDep, sets: SetsDep) -> JSONResponse:
    loaded = {
        served.name: {
            "loaded": served.loaded,
            "state": served.state,
            "engine": served.engine_name,
            "queue_depth": served.work.depth,
        }
        for served in sets
    }
    reason = lifecycle.not_ready_reason() or sets.default_refused()
    if reason:
        return JSONResponse({"status": "not ready", "error": reason, "model_sets": loaded}, status_code=503)
    return JSONResponse(
        {
            "status": "ready",
            "engine": lifecycle.engine_name,
            "workers": sets.workers,
            "queue_depth": sets.depth,
            "default_model_set": sets.default.name,
            "model_sets": loaded,
        }
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
