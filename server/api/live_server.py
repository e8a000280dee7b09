"""Running the app on a real uvicorn server in a background thread (benchmarks, tests, notebooks)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from server.serving.header_deadline import header_deadline_protocol


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def live_server(app, wait_ready: bool = True) -> Iterator[str]:
    """Serve `app` on a free loopback port; yields its base URL (after readiness unless told not to)."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http=header_deadline_protocol(app.state.settings.header_timeout_s),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.02)
    while wait_ready and httpx.get(f"{url}/health/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("server not ready")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)
