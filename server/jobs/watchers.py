"""Who follows a job's event stream: woken when the job changes, instead of polling the store, and counted per key.

The dispatcher and the worker threads call `notify` when a job here changes (its status, or a step the engine
reports); each stream waits on its own event, so an idle stream costs nothing until then. A job that another
replica runs (a shared store) changes without a notification here: its streams also read the store every few
seconds (server/api/job_events.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from server.errors import TooManyRequests


class JobWatchers:
    def __init__(self, max_per_key: int):
        """Built on the event loop that the streams run on."""
        self.max_per_key = max_per_key
        self._loop = asyncio.get_running_loop()
        self._following: dict[str, set[asyncio.Event]] = {}
        self._streams: Counter[str] = Counter()  # open streams by key id

    def notify(self, job_id: str) -> None:
        """Wake the streams following `job_id`; from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._wake, job_id)
        except RuntimeError:
            pass  # the loop is closed: nobody is following any more

    def _wake(self, job_id: str) -> None:
        for changed in self._following.get(job_id, ()):
            changed.set()

    def follow(self, job_id: str) -> asyncio.Event:
        """An event set whenever `job_id` changes (the follower clears it before it reads the job)."""
        changed = asyncio.Event()
        self._following.setdefault(job_id, set()).add(changed)
        return changed

    def unfollow(self, job_id: str, changed: asyncio.Event) -> None:
        followers = self._following.get(job_id, set())
        followers.discard(changed)
        if not followers:
            self._following.pop(job_id, None)

    def admit(self, key_id: str) -> Callable[[], None]:
        """Count one more stream for `key_id` (429 if it holds as many as a key may); returns its release, which
        may be called more than once."""
        if self._streams[key_id] >= self.max_per_key:
            raise TooManyRequests(
                f"this key already has {self._streams[key_id]} event streams open, the most a key may hold "
                f"({self.max_per_key}); close one, or poll the job's status instead",
                {"Retry-After": "5"},
            )
        self._streams[key_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._release(key_id)

        return release

    def _release(self, key_id: str) -> None:
        self._streams[key_id] -= 1
        if self._streams[key_id] <= 0:
            del self._streams[key_id]
