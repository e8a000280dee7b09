"""Building the FastAPI app: settings, engine, routes, error handlers, request ids."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from pipelines import Engine, load_engine

from . import __version__
from .errors import install_error_handlers
from .routes import router
from .settings import Settings
from .worker import EngineRunner

log = logging.getLogger("segswap")
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The app; `engine` lets a caller (tests, the CLI) hand over one already loaded."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runner = EngineRunner(engine or load_configured_engine(settings))
        try:
            yield
        finally:
            app.state.runner.close()

    app = FastAPI(
        title="segswap",
        version=__version__,
        description="Self-hosted SegSwap v0.1: swap an object or pattern into the masked region of a photo.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.middleware("http")(_request_id)
    return app


def load_configured_engine(settings: Settings) -> Engine:
    """The engine the settings ask for; logs which one and why."""
    choice = load_engine(
        settings.engine, settings.weights_dir, arch=settings.model_set, variant=settings.ip_adapter,
        options=settings.diffusion_options(),
    )
    log.info("engine: %s (%s)", choice.engine.name, choice.reason)
    return choice.engine


async def _request_id(request: Request, call_next):
    given = request.headers.get("x-request-id", "")
    request_id = given if CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
    request.state.request_id = request_id
    response = await call_next(request)
    response.headers["x-request-id"] = request_id
    return response
