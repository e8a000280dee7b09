"""Selecting regions for the API: the segmenter (GrabCut, or SAM 2 when installed) loaded on first use, one
selection at a time, off the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from PIL import Image

from pipelines import SegswapError
from pipelines.masks import Segmenter, Selector, load_segmenter, select_mask
from server.errors import Unavailable
from server.settings import Settings

log = logging.getLogger("segswap")


@dataclass(frozen=True)
class Selected:
    mask: Image.Image  # L, the main image's size, 255 = selected
    segmenter: str
    seconds: float


class SelectionService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._segmenter: Segmenter | None = None
        self._lock = threading.Lock()  # SAM 2 holds one model; GrabCut is quick: one selection at a time

    async def select(self, image: Image.Image, selector: Selector) -> Selected:
        """The mask; InvalidInput for a selection that cannot be used, Unavailable when the models cannot load."""
        return await asyncio.to_thread(self._select, image, selector)

    def _select(self, image: Image.Image, selector: Selector) -> Selected:
        with self._lock:
            segmenter = self._loaded()
            start = time.perf_counter()
            mask = select_mask(image, selector, segmenter)
            return Selected(mask, segmenter.name, time.perf_counter() - start)

    def _loaded(self) -> Segmenter:
        if self._segmenter is None:
            settings = self.settings
            try:
                self._segmenter = load_segmenter(settings.weights_dir, settings.segmenter, settings.device)
            except SegswapError as exc:
                log.error("selection models cannot be loaded: %s", exc)
                raise Unavailable(
                    "selection by box, points or words is unavailable: its models cannot be loaded "
                    "(the server log says why)"
                ) from None
            log.info("selection: %s", self._segmenter.name)
        return self._segmenter
