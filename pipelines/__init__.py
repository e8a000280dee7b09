"""The segswap engine, usable without the server.

    from PIL import Image
    from pipelines import SwapJob, load_engine

    engine = load_engine("auto").engine        # load once
    job = SwapJob(main_image=Image.open("room.png"), mask_image=Image.open("mask.png"),
                  object_image=Image.open("table.png"), prompt="a wooden table", seed=7)
    engine.swap(job).save("out.png")           # call many times
"""

from .composite import CompositeEngine
from .errors import EngineUnavailable, InvalidInput, SegswapError, WeightsError
from .job import MAX_SEED, SwapJob, resolve_seed
from .model_sets import ModelSet, find_model_set, require_model_set
from .options import DiffusionOptions
from .protocol import Engine, ProgressFn
from .selection import EngineChoice, EngineKind, load_engine

__all__ = [
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
    "find_model_set",
    "load_engine",
    "require_model_set",
    "resolve_seed",
]
