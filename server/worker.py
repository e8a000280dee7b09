"""Running the engine off the event loop, on one thread that owns the device."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from pipelines import Engine, SwapJob


class EngineRunner:
    """Serialises engine calls on a single worker thread; the event loop only awaits them."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segswap-engine")

    async def run(self, job: SwapJob) -> tuple[Image.Image, float]:
        """The image and the seconds the engine spent on it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._timed_swap, job)

    def _timed_swap(self, job: SwapJob) -> tuple[Image.Image, float]:
        start = time.perf_counter()
        image = self.engine.swap(job)
        return image, time.perf_counter() - start

    def close(self) -> None:
        self._executor.shutdown(wait=True)
