"""Who turns a selection into a mask: GrabCut without weights; SAM 2 (with OWLv2 for words) with them."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from pipelines import paths
from pipelines.errors import EngineUnavailable, InvalidInput, WeightsError
from pipelines.masks.grabcut import grabcut_select
from pipelines.masks.selector import Selector, StopFn
from pipelines.models import mask_files

SegmenterKind = Literal["auto", "grabcut", "sam2"]

log = logging.getLogger("segswap.masks")


class Segmenter(Protocol):
    """Turns a selection on an image into a boolean mask of its size. `name` says which method did it. `stop`, when
    given, is asked as the work goes on: once it answers True the selection ends with Stopped."""

    name: str

    def select(self, image: Image.Image, selector: Selector, stop: StopFn | None = None) -> np.ndarray: ...


class GrabCutSegmenter:
    """Boxes and points by OpenCV GrabCut (grabcut.py); words need models."""

    name = "grabcut"

    def select(self, image: Image.Image, selector: Selector, stop: StopFn | None = None) -> np.ndarray:
        selector.check(image.size)
        if selector.text is not None:
            raise InvalidInput(
                "selecting by words needs the sam2 and owlv2 model sets (segswap weights download sam2, then "
                "owlv2); without them select by box or points",
                "text",
            )
        return grabcut_select(image, selector, stop)


def load_segmenter(weights_dir: Path | None = None, kind: SegmenterKind = "auto", device: str = "auto") -> Segmenter:
    """`auto`: SAM 2 (with OWLv2 for words when that set is there too) when the sam2 set is installed in
    `weights_dir` and torch and transformers are and it loads, else GrabCut. `sam2` without them raises a
    clear error."""
    if kind == "grabcut":
        return GrabCutSegmenter()
    weights_dir = Path(weights_dir) if weights_dir is not None else paths.weights_dir()
    sam2_dir = mask_files.installed(weights_dir, mask_files.SAM2)
    if sam2_dir is None:
        if kind == "sam2":
            lacking = ", ".join(mask_files.missing(weights_dir, mask_files.SAM2))
            raise WeightsError(
                f"no complete sam2 model set in {weights_dir} (missing sam2/{lacking}): segswap weights download sam2"
            )
        return GrabCutSegmenter()
    if not all(importlib.util.find_spec(name) for name in ("torch", "transformers")):
        if kind == "sam2":
            raise EngineUnavailable("SAM 2 needs torch and transformers: pip install 'segswap[diffusion]'")
        return GrabCutSegmenter()
    from pipelines.masks.sam2 import Sam2Selector
    from pipelines.torch_runtime import pick_device

    detector = mask_files.installed(weights_dir, mask_files.DETECTOR)
    try:
        return Sam2Selector(sam2_dir, detector, pick_device(device, "float32")[0])
    except WeightsError as exc:
        if kind == "sam2":
            raise
        log.error("%s; selecting with GrabCut instead", exc)  # auto: a broken set must not stop selection
        return GrabCutSegmenter()


def select_mask(
    image: Image.Image, selector: Selector, segmenter: Segmenter | None = None, stop: StopFn | None = None
) -> Image.Image:
    """The selected region of `image` as a mask image (L: 255 selected, 0 not), the image's size; Stopped once
    `stop()` answers True (see Segmenter)."""
    mask = (segmenter or GrabCutSegmenter()).select(image, selector, stop)
    if not mask.any():
        raise InvalidInput(f"the {selector.kind} selected nothing in the image; select more of the object")
    return Image.fromarray(mask.astype(np.uint8) * 255, "L")
