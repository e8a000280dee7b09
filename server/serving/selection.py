"""Selecting regions for the API: the segmenter (GrabCut, or SAM 2 when installed) loaded on first use, one
selection at a time, off the event loop.

Requests wait their turn on the event loop (an asyncio semaphore), not in the thread pool that decoding,
encoding and the stores share; at most `max_queue` wait (then 429), and a selection past the request's
deadline answers 504.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from PIL import Image

from pipelines import SegswapError, WeightsError
from pipelines.masks import Segmenter, Selector, load_segmenter, select_mask
from server.errors import TimedOut, TooManyRequests, Unavailable
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
        self._turn = asyncio.Semaphore(1)
        self._waiting = 0
        self._running = threading.Lock()  # a selection past its deadline may still be running in its thread

    async def select(self, image: Image.Image, selector: Selector, deadline: float) -> Selected:
        """The mask; InvalidInput for a selection that cannot be used, Unavailable when the models cannot load,
        TooManyRequests when too many wait, TimedOut past `deadline` (time.monotonic())."""
        if self._waiting >= self.settings.max_queue:
            raise TooManyRequests("too many selections are waiting; retry in a few seconds", {"Retry-After": "5"})
        self._waiting += 1
        waiting = True
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                async with self._turn:
                    self._waiting, waiting = self._waiting - 1, False
                    return await asyncio.to_thread(self._select, image, selector)
        except TimeoutError:
            raise TimedOut(f"the selection did not finish within {self.settings.request_timeout_s:g} s") from None
        finally:
            if waiting:
                self._waiting -= 1

    def _select(self, image: Image.Image, selector: Selector) -> Selected:
        with self._running:
            segmenter = self._loaded()
            start = time.perf_counter()
            try:
                mask = select_mask(image, selector, segmenter)
            except WeightsError as exc:  # the detector, loaded on the first words, cannot load
                log.error("selection by %s unavailable: %s", selector.kind, exc)
                raise Unavailable(
                    f"selection by {selector.kind} is unavailable: its model cannot be loaded (the server log says why)"
                ) from None
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
