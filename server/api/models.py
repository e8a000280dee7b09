"""GET /v1/models: the model sets this server serves, in OpenAI's list shape (`client.models.list()` reads it)."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter

from pipelines.models.model_sets import COMPOSITE
from pipelines.models.weights import load_manifest
from server.api.deps import CallerDep, SetsDep
from server.contract import ErrorResponse, ModelCard, ModelList
from server.serving.served_sets import ServedSet

router = APIRouter()
NO_WEIGHTS = "none: no model weights (placement only)"


@router.get(
    "/v1/models",
    summary="The model sets served here: name, arch, licence, loaded or not, default",
    response_model=ModelList,
    responses={status: {"model": ErrorResponse} for status in (401, 403)},
)
async def list_models(caller: CallerDep, sets: SetsDep) -> ModelList:
    return ModelList(data=[_card(served, served is sets.default) for served in sets])


def _card(served: ServedSet, default: bool) -> ModelCard:
    arch, licence = _described(served.name)
    return ModelCard(
        id=served.name,
        created=int(served.since),
        arch=arch,
        license=licence,
        loaded=served.loaded,
        default=default,
        loras=served.lora_names(),
    )


@cache
def _described(name: str) -> tuple[str, str]:
    """The set's arch and licences, from the shipped weights manifest."""
    if name == COMPOSITE:
        return COMPOSITE, NO_WEIGHTS
    entry = load_manifest().sets[name]
    return entry.arch, entry.license
