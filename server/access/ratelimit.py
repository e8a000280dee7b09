"""Per-key request rates: a token bucket per key, in this process's memory."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    def __init__(self, clock=time.monotonic):
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, last refill)
        self._lock = threading.Lock()
        self._clock = clock

    def take(self, key_id: str, per_minute: int) -> float:
        """Take one request from the key's bucket; 0 if allowed, else the seconds until one is free."""
        now = self._clock()
        rate = per_minute / 60.0
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
