"""Request ids, one JSON log line per request, and response metrics: a plain ASGI middleware.

The request id comes from the client's `x-request-id` when it is a sane token, else it is
generated; it is echoed on every response, errors included, and is in every log line.
Routes add what they know (key id, engine, timings) to `request.state.log`.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.serving.heap import IdleTrimmer
from server.serving.metrics import Metrics

access_log = logging.getLogger("segswap.access")
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
ROUTES_MEASURED = ("/v1/seg-swap", "/v2/seg-swap")


class AccessMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, heap: IdleTrimmer):
        self.app, self.metrics, self.heap = app, metrics, heap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["log"] = {}
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                if state.get("remaining_credits") is not None:
                    headers["x-remaining-credits"] = str(state["remaining_credits"])
            await send(message)

        # Probes, scrapes and open event streams hold no images: they neither wait for a trim nor ask for one.
        counted = not (scope["path"].endswith("/events") or scope["path"].startswith(("/health", "/metrics")))
        if counted:
            self.heap.begin()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                self.heap.end()
            self._record(scope, request_id, status, time.perf_counter() - started, state["log"])

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float, extra: dict) -> None:
        path = scope["path"]
        if path in ROUTES_MEASURED:
            self.metrics.responses.labels(path, str(status)).inc()
            self.metrics.request_seconds.labels(path).observe(seconds)
        if path.startswith("/health") or path == "/metrics":
            return  # probes every few seconds would drown the log
        line = {
            "request_id": request_id,
            "method": scope["method"],
            "path": path,
            "status": status,
            "duration_s": round(seconds, 4),
            **extra,
        }
        access_log.info(json.dumps(line, separators=(",", ":")), extra={"access": line})


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if CLIENT_REQUEST_ID.match(given):
                return given
    return uuid.uuid4().hex
