import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from pipelines import CompositeEngine
from server.api.app import create_app
from server.settings import Settings
from tests.conftest import png_bytes, wait_ready

KEY = "test-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """An app with one API key on the composite engine."""
    app = create_app(
        Settings(api_keys=[KEY], max_body_bytes=2_000_000, max_image_pixels=1_000_000, fetch_allow=["127.0.0.1"]),
        CompositeEngine(),
    )
    with TestClient(app, headers={"x-api-key": KEY}) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the whole session (tests/server/pg.py); skips where none can run."""
    from tests.server.pg import start_or_skip

    server = start_or_skip()
    yield server
    server.stop()


@pytest.fixture()
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty PostgreSQL database."""
    return pg_server.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request) -> str | None:
    """Runs a test on both stores: None (embedded SQLite), then a fresh PostgreSQL database."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


@pytest.fixture()
def files(tmp_path, scene, mask, obj) -> dict:
    """The scene, mask and object as PNG files (for the CLI and the batch)."""
    paths = {}
    for name, image in [("main", scene), ("mask", mask), ("object", obj)]:
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(png_bytes(image))
    return paths


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`segswap ARGS` in a child process under a 2 GiB memory cap and a time limit: a regression that reads
    /dev/zero or waits on a FIFO fails its test instead of filling the machine or hanging the suite. (The
    child also logs as the command does: pytest's handlers are not in the way.)"""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    command = [sys.executable, "-m", "server", *args]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=120, preexec_fn=cap_memory
    )
