"""Selecting regions for the API: the segmenter (GrabCut, or SAM 2 when installed) loaded on first use, one
selection at a time, off the event loop.

Requests wait their turn on the event loop (an asyncio semaphore), not in the thread pool that decoding,
encoding and the stores share; at most `max_queue` wait (then 429, at once). A request takes its turn before it
decodes its images: those that wait hold their bytes as sent, never their pixels. A selection past the request's
deadline answers 504, and its work stops too: the segmenter is asked to stop (between GrabCut's iterations), so
an abandoned selection does not keep a core busy after its answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from PIL import Image

from pipelines import SegswapError, WeightsError
from pipelines.errors import Stopped
from pipelines.masks import Segmenter, Selector, load_segmenter, select_mask
from pipelines.masks.selector import StopFn
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
        # A selection answered 504 winds down in its thread (at most one GrabCut iteration): the next waits for it.
        self._running = threading.Lock()

    @asynccontextmanager
    async def turn(self, deadline: float) -> AsyncIterator[None]:
        """This request's turn to decode its images and select: TooManyRequests at once when `max_queue` requests
        already wait, TimedOut when the turn has not come by `deadline` (time.monotonic())."""
        if self._waiting >= self.settings.max_queue:
            raise TooManyRequests("too many selections are waiting; retry in a few seconds", {"Retry-After": "5"})
        self._waiting += 1
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._turn.acquire()
        except TimeoutError:
            raise self._timed_out() from None
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._turn.release()

    async def select(self, image: Image.Image, selector: Selector, deadline: float) -> Selected:
        """The mask, in the request's turn; InvalidInput for a selection that cannot be used, Unavailable when the
        models cannot load, TimedOut past `deadline`, when the selection's work stops as well."""
        abandoned = threading.Event()

        def stop() -> bool:
            return abandoned.is_set() or time.monotonic() >= deadline

        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                return await asyncio.to_thread(self._select, image, selector, stop)
        except (TimeoutError, Stopped):
            raise self._timed_out() from None
        finally:
            abandoned.set()  # answered, timed out or the client left: the thread stops at its next question

    def _timed_out(self) -> TimedOut:
        return TimedOut(f"the selection did not finish within {self.settings.request_timeout_s:g} s")

    def _select(self, image: Image.Image, selector: Selector, stop: StopFn) -> Selected:
        with self._running:
            if stop():  # abandoned while an earlier selection wound down
                raise Stopped("the selection was abandoned before it started")
            segmenter = self._loaded()
            start = time.perf_counter()
            try:
                mask = select_mask(image, selector, segmenter, stop)
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
