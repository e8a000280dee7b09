"""The model sets served here: GET /v1/models in OpenAI's list shape (`client.models.list()` reads it), one set
at GET /v1/models/{name}, and for admin keys, loading and unloading sets at runtime (server/serving/set_loading.py).
"""

from __future__ import annotations

import asyncio
from functools import cache

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from pipelines.models.model_sets import COMPOSITE
from pipelines.models.weights import load_manifest
from server.api.deps import CallerDep, LoaderDep, SetsDep
from server.contract import ErrorResponse, ModelCard, ModelList, UnloadResult
from server.errors import NotFound
from server.serving.served_sets import LOADED, ServedSet, ServedSets

router = APIRouter()
NO_WEIGHTS = "none: no model weights (placement only)"
ADMIN_ERRORS = {status: {"model": ErrorResponse} for status in (401, 403, 404, 409)}


@router.get(
    "/v1/models",
    summary="The model sets served here: name, arch, licence, loaded or not, default",
    response_model=ModelList,
    responses={status: {"model": ErrorResponse} for status in (401, 403)},
)
async def list_models(caller: CallerDep, sets: SetsDep) -> ModelList:
    return ModelList(data=[card(served, sets) for served in sets])


@router.get(
    "/v1/models/{name}",
    summary="One model set served here",
    response_model=ModelCard,
    responses={status: {"model": ErrorResponse} for status in (401, 403, 404)},
)
async def get_model(name: str, caller: CallerDep, sets: SetsDep) -> ModelCard:
    try:
        return card(sets.get(name), sets)
    except KeyError:
        raise NotFound(f"model set {name!r} is not served here; served: {', '.join(sets.names)}") from None


@router.post(
    "/v1/models/{name}/load",
    summary="Admin: load a model set (answers at once; poll GET /v1/models/{name} until loaded)",
    response_model=ModelCard,
    status_code=202,
    responses={200: {"model": ModelCard, "description": "already loaded"}, **ADMIN_ERRORS},
)
async def load_model(name: str, caller: CallerDep, sets: SetsDep, loader: LoaderDep) -> JSONResponse:
    served = await asyncio.to_thread(loader.load, name)
    return JSONResponse(card(served, sets).model_dump(), status_code=200 if served.state == LOADED else 202)


@router.post(
    "/v1/models/{name}/unload",
    summary="Admin: unload a model set, after its queued and running jobs; its requests get 503 until loaded",
    response_model=UnloadResult,
    responses=ADMIN_ERRORS,
)
async def unload_model(name: str, caller: CallerDep, sets: SetsDep, loader: LoaderDep) -> UnloadResult:
    done = await asyncio.to_thread(loader.unload, name)
    return UnloadResult(
        model=card(sets.get(name), sets),
        seconds=round(done.seconds, 3),
        freed_bytes=done.freed_bytes if done.held_before else 0,
        held_before=done.held_before,
        held_after=done.held_after,
    )


def card(served: ServedSet, sets: ServedSets) -> ModelCard:
    arch, licence = _described(served.name)
    return ModelCard(
        id=served.name,
        created=int(served.since),
        arch=arch,
        license=licence,
        loaded=served.loaded,
        state=served.state,
        reason=served.reason,
        default=served is sets.default,
        loras=served.lora_names(),
    )


@cache
def _described(name: str) -> tuple[str, str]:
    """The set's arch and licences, from the shipped weights manifest."""
    if name == COMPOSITE:
        return COMPOSITE, NO_WEIGHTS
    entry = load_manifest().sets[name]
    return entry.arch, entry.license
