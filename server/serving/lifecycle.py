"""Start-up, readiness and draining.

Engines load and warm up in the background so that /health/live answers at once;
/health/ready turns 200 only when every worker is warm. An engine that fails to load does
not heal (a corrupt file, a missing library): /health/ready says why, and `segswap serve`
exits at once, non-zero, with the reason on one line, for its supervisor to report or
restart it. On SIGTERM the server drains: readiness and new requests get 503 at once,
queued and running jobs finish (up to a grace period), then the process exits with status 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from server.serving.work_queue import WorkQueue

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.failure: str | None = None  # why the engine is down, for callers (no paths)
        self.failure_detail: str | None = None  # and in full, for the operator
        self.engine_name = "loading"
        self.check_lora: Callable[[str], None] = lambda name: None  # the engine's, once loaded (v2 checks at submit)

    def not_ready_reason(self) -> str | None:
        if self.failure:
            return f"the engine failed to load: {self.failure}"
        if self.draining:
            return "the server is shutting down"
        if not self.ready:
            return "the engine is loading and warming up"
        return None


class DrainingServer(uvicorn.Server):
    """uvicorn, but SIGTERM first drains the queue; a second signal (or Ctrl-C) stops at once; an engine that
    failed to load stops it too."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, work: WorkQueue, grace_s: float):
        super().__init__(config)
        self.lifecycle, self.work, self.grace_s = lifecycle, work, grace_s

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.lifecycle.draining:
            self.lifecycle.draining = True
            log.info("SIGTERM: draining (up to %.0f s) before exit", self.grace_s)
            threading.Thread(target=self._exit_when_idle, name="segswap-drain", daemon=True).start()
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self.lifecycle.failure and not self.should_exit:
            log.error("stopping: the engine failed to load")
            self.should_exit = True
        return await super().on_tick(counter)

    def _exit_when_idle(self) -> None:
        if not self.work.wait_idle(self.grace_s):
            log.warning("grace period over with jobs still queued or running; exiting")
        self.should_exit = True
