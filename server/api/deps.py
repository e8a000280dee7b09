"""What routes receive: the app's shared objects and the authenticated caller, as `Annotated` dependencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from server.access.auth import QUERY_KEY_NAMES, Presented, authenticate
from server.access.keys import Caller
from server.jobs.dispatcher import JobRunner
from server.serving.lifecycle import Lifecycle
from server.serving.metrics import Metrics
from server.serving.served_sets import ServedSets
from server.serving.set_loading import SetLoader
from server.serving.work_queue import WorkQueue
from server.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_work(request: Request) -> WorkQueue:
    return request.app.state.work


def get_sets(request: Request) -> ServedSets:
    return request.app.state.sets


def get_loader(request: Request) -> SetLoader:
    return request.app.state.loader


def get_lifecycle(request: Request) -> Lifecycle:
    return request.app.state.lifecycle


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_jobs(request: Request) -> JobRunner:
    return request.app.state.jobs


API_KEY = APIKeyHeader(name="x-api-key", auto_error=False, description="the API key (segswap keys add)")
BEARER = HTTPBearer(auto_error=False, description="the API key as a bearer token, as many clients send it")


def require_api_key(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    header_key: Annotated[str | None, Security(API_KEY)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
) -> Caller:
    state = request.app.state
    server = request.scope.get("server")
    presented = Presented(
        key=header_key or (bearer.credentials if bearer else None),
        path=request.url.path,
        server_host=str(server[0]) if server else None,
        key_in_query=any(name in request.query_params for name in QUERY_KEY_NAMES),
    )
    caller = authenticate(presented, settings, state.key_file, state.limiter)
    request.state.log["key_id"] = caller.key_id
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings)]
CallerDep = Annotated[Caller, Depends(require_api_key)]
WorkDep = Annotated[WorkQueue, Depends(get_work)]
SetsDep = Annotated[ServedSets, Depends(get_sets)]
LoaderDep = Annotated[SetLoader, Depends(get_loader)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
