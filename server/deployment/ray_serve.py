"""Past one machine: the same FastAPI app and engine as a Ray Serve application, one replica per GPU, autoscaled.

    serve run server.deployment.ray_serve:app                      # this machine (starts a local Ray)
    serve deploy deploy/ray/serve_config.yaml           # a running cluster (see deploy/ray/README.md)

Each replica is one Ray actor holding `num_gpus` GPUs (1 by default); Ray sets CUDA_VISIBLE_DEVICES
so the replica sees its GPU as cuda:0, and the replica runs the plain app, `create_app(Settings())`,
with one worker on it. Settings come from the SEGSWAP_* environment variables, which the Serve
config sets through `runtime_env.env_vars`. A replica without a GPU runs one CPU worker.

`@serve.ingress` runs the app's lifespan inside the replica (Ray drives it with uvicorn's
LifespanOn), so the engine loads and the worker starts and stops exactly as under `segswap serve`.
The replica's `check_health` waits for the engine to be warm before Ray first marks it RUNNING, so
the proxy never routes to a replica that is still loading; later, an engine that failed to load
fails the check and Ray replaces the replica.

Several model sets (SEGSWAP_MODEL_SET) are routed by set with Ray Serve's model multiplexing
(server/deployment/multiplexing.py): a replica starts with the default set only (lazy loading) and holds
at most `max_sets_per_replica` others, those the requests sent to it named.

Each replica keeps its own bounded queue: `max_ongoing_requests` is set above the queue size plus
its workers, so a full replica still answers 429 with Retry-After itself instead of Ray holding
requests; the autoscaler adds replicas when the replicas' queues are half full.
"""

import asyncio
import logging
import math
from typing import Any

import ray
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.app import create_app
from server.deployment.multiplexing import RouteBySet, SetMultiplexer
from server.serving.logs import JsonFormatter
from server.settings import Settings

log = logging.getLogger("segswap")

READY_POLL_S = 0.25
DEFAULT_MAX_SETS = 2
PROBE_HEADROOM = 8
"""Ongoing requests a replica accepts beyond its queue and workers: health probes, /metrics, the 429s themselves."""


class RayArgs(BaseModel):
    """`args:` of an application in the Serve config, or `serve run server.deployment.ray_serve:app key=value ...`.

    The config's `deployments:` section, when it sets the same options, wins over these.
    """

    model_config = ConfigDict(extra="forbid")

    num_gpus: float = Field(1, ge=0, description="GPUs per replica; 0: CPU-only replicas")
    num_cpus: float = Field(1, gt=0, description="CPUs reserved per replica")
    min_replicas: int = Field(1, ge=1)
    max_replicas: int | None = Field(None, ge=1, description="default: the cluster's GPUs / num_gpus when deployed")
    target_ongoing_requests: float | None = Field(None, gt=0, description="default: half of SEGSWAP_MAX_QUEUE")
    max_sets_per_replica: int = Field(
        DEFAULT_MAX_SETS,
        ge=1,
        description="model sets a replica holds besides the default, routed by the serve_multiplexed_model_id "
        "header; they and the default must fit its GPU's memory together",
    )


def replica_devices(settings: Settings) -> list[str]:
    """The workers of this replica: SEGSWAP_DEVICES if set, else one per GPU Ray gave it, else one CPU."""
    if settings.devices:
        return settings.devices
    gpus = ray.get_gpu_ids()  # Ray has set CUDA_VISIBLE_DEVICES to these, so torch numbers them from 0
    return [f"cuda:{index}" for index in range(len(gpus))] or ["cpu"]


def build_replica_app() -> FastAPI:
    """Runs inside each replica: the plain app, on this replica's devices.

    Sets load lazily, so that a replica holds the default set and only those requests routed to it name.
    """
    settings = Settings()
    settings = settings.model_copy(update={"devices": replica_devices(settings), "lazy_load": True})
    _log_to_stderr(settings.log_level)
    if not settings.auth_required:
        log.warning(
            "no API keys configured (SEGSWAP_API_KEYS or SEGSWAP_KEYS_FILE): "
            "requests that reach the proxy on a non-loopback address get 401"
        )
    log.info("replica on %s (Ray GPU ids %s)", ", ".join(settings.devices), ray.get_gpu_ids())
    app = create_app(settings)
    app.add_middleware(OneRequestIdHeader)
    return app


class OneRequestIdHeader:
    """Ray's proxy adds x-request-id to every response: the client's id, or the one it generated and passed
    to the app in the request headers (which the app then logs). The app's own copy is dropped so that
    clients get one header, as from `segswap serve`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_without_request_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                del MutableHeaders(scope=message)["x-request-id"]
            await send(message)

        await self.app(scope, receive, send_without_request_id if scope["type"] == "http" else send)


def _log_to_stderr(level: str) -> None:
    """JSON lines on the replica's stderr (Ray keeps them in the worker's log file); Ray's own logging untouched."""
    logger = logging.getLogger("segswap")
    if not any(isinstance(handler.formatter, JsonFormatter) for handler in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


@serve.deployment(name="segswap")
@serve.ingress()
class SegSwapReplica:
    """One replica: the app (built by `build_replica_app`, its lifespan run by Ray), the sets it holds for
    requests routed by set, and Ray's health check."""

    def __init__(self, max_sets_per_replica: int = DEFAULT_MAX_SETS):
        self.max_sets = max_sets_per_replica

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Ray calls this in the replica after `__init__`, then runs the app's lifespan."""
        app = build_replica_app()
        multiplexer = SetMultiplexer(app.state.loader, app.state.sets, self.max_sets)
        replica = serve.get_replica_context().replica_id.unique_id
        app.add_middleware(RouteBySet, hold=multiplexer.hold, replica=replica)
        return app

    async def check_health(self) -> None:
        """Ray calls this once before the replica takes traffic, then every `health_check_period_s`.

        The first call waits until the engine is warm (no time limit: loading a model set can take
        minutes); an engine that failed to load raises, and Ray starts a new replica in its place.
        """
        lifecycle = self.app.state.lifecycle
        while not lifecycle.ready and not lifecycle.failure:
            await asyncio.sleep(READY_POLL_S)
        if lifecycle.failure:
            raise RuntimeError(f"the engine failed to load: {lifecycle.failure}")


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The Serve application; Ray calls this with the config's `args:` (`server.deployment.ray_serve:app`)."""
    options = RayArgs.model_validate(args or {})
    settings = Settings()  # the same SEGSWAP_* variables as the replicas: the build runs in the app's runtime_env
    workers = len(settings.devices) if settings.devices else max(1, math.floor(options.num_gpus))
    autoscaling = {
        "min_replicas": options.min_replicas,
        "initial_replicas": options.min_replicas,
        "max_replicas": max(options.min_replicas, options.max_replicas or _replicas_the_cluster_fits(options.num_gpus)),
        "target_ongoing_requests": options.target_ongoing_requests or max(1, settings.max_queue // 2),
    }
    return SegSwapReplica.options(
        ray_actor_options={"num_gpus": options.num_gpus, "num_cpus": options.num_cpus},
        autoscaling_config=autoscaling,
        max_ongoing_requests=settings.max_queue + workers + PROBE_HEADROOM,
        graceful_shutdown_timeout_s=settings.drain_grace_s,
        health_check_period_s=10,
        health_check_timeout_s=30,
    ).bind(options.max_sets_per_replica)


def _replicas_the_cluster_fits(num_gpus: float) -> int:
    """One replica per `num_gpus` GPUs in the cluster now (1 without Ray running, or for CPU replicas)."""
    if num_gpus <= 0 or not ray.is_initialized():
        return 1
    return max(1, math.floor(ray.cluster_resources().get("GPU", 0) / num_gpus))


app = build_app
"""The import path for `serve run` / `serve deploy`: `server.deployment.ray_serve:app` (an application builder)."""
