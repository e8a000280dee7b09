"""The segswap engine, usable without the server.

from PIL import Image
from pipelines import SwapJob, load_engine

engine = load_engine("auto").engine        # load once
job = SwapJob(main_image=Image.open("room.png"), mask_image=Image.open("mask.png"),
              object_image=Image.open("table.png"), prompt="a wooden table", seed=7)
engine.swap(job).save("out.png")           # call many times
"""

from pipelines.engines.composite import CompositeEngine
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.engines.selection import EngineChoice, EngineKind, load_engine
from pipelines.errors import EngineUnavailable, InvalidInput, SegswapError, WeightsError
from pipelines.interface import Engine, ProgressFn
from pipelines.job import IMAGE_FIELDS, MAX_SEED, SwapJob, build_job, resolve_seed
from pipelines.models.model_sets import ModelSet, find_model_set, require_model_set

__all__ = [
    "IMAGE_FIELDS",
    "MAX_SEED",
    "CompositeEngine",
    "DiffusionOptions",
    "Engine",
    "EngineChoice",
    "EngineKind",
    "EngineUnavailable",
    "InvalidInput",
    "ModelSet",
    "ProgressFn",
    "SegswapError",
    "SwapJob",
    "WeightsError",
    "build_job",
    "find_model_set",
    "load_engine",
    "require_model_set",
    "resolve_seed",
]
