"""Shared fixtures: small sample images, encoded every way the contract accepts them, and a loopback file server."""

from __future__ import annotations

import base64
import io
import os
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
# anyio is a pytest plugin, so pytest rewrites its modules (ast.parse) when they are first imported, and anyio
# imports some lazily: FileResponse's first use imports its file module. Several server threads doing that at
# once hit Python 3.11's thread-unsafe AST validation ("AST constructor recursion depth mismatch") and the
# response dies half-sent. Import it here, once, before any test starts a server.
import anyio  # noqa: E402

anyio.open_file  # noqa: B018
# Keys, job stores, ledgers and weights of apps built by tests: never the user's data directory, never the checkout.
os.environ["SEGSWAP_DATA_DIR"] = tempfile.mkdtemp(prefix="segswap-tests-")
os.environ.pop("SEGSWAP_WEIGHTS_DIR", None)


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    return base64.b64encode(png_bytes(image, fmt)).decode()


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def rect_mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


@pytest.fixture(scope="session")
def scene() -> Image.Image:
    return noise_image((96, 64), seed=1)


@pytest.fixture(scope="session")
def mask() -> Image.Image:
    return rect_mask((96, 64), (30, 20, 60, 45))


@pytest.fixture(scope="session")
def obj() -> Image.Image:
    image = Image.new("RGBA", (20, 30), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((0, 0, 19, 29), fill=(20, 200, 40, 255))
    return image


@pytest.fixture()
def body(scene: Image.Image, mask: Image.Image, obj: Image.Image) -> dict:
    """A valid JSON body with all three images as raw base64."""
    return {"main_image": b64(scene), "mask_image": b64(mask), "object_image": b64(obj), "steps": 10, "seed": 7}


class FileServer:
    """Serves `files` (path -> bytes) on 127.0.0.1; records the paths asked for."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []
        handler = self._handler()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                data = server.files.get(self.path)
                self.send_response(200 if data is not None else 404)
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="session")
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


# CI installs every library a test imports or skips (diffusers, c2pa, invisible-watermark, openai, ...) and sets
# SEGSWAP_REQUIRE_EXTRAS=1: there such a skip is a failure, as a missing PostgreSQL or browser is, so a broken install
# cannot pass as a skip.
REQUIRE_EXTRAS = os.environ.get("SEGSWAP_REQUIRE_EXTRAS") == "1"


def missing_library(report) -> bool:
    """A skip by pytest.importorskip: its reason starts "could not import"."""
    return report.skipped and "could not import" in str(report.longrepr)


def fail_for_missing_library(report) -> None:
    if REQUIRE_EXTRAS and missing_library(report):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"SEGSWAP_REQUIRE_EXTRAS=1 but {reason.removeprefix('Skipped: ')}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield  # a module-level importorskip skips the module's collection
    fail_for_missing_library(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    fail_for_missing_library(report)
    return report


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """Tiny random-weight SD1.5 and SDXL model sets and their LCM-LoRAs, in the layout of a real download."""
    pytest.importorskip("diffusers")
    from pipelines.models.tiny import make_tiny

    out = tmp_path_factory.mktemp("weights")
    make_tiny(out, sets=("sdxl", "sd15", "sdxl-lcm", "sd15-lcm"))
    return out


@pytest.fixture(scope="session")
def tiny_flux2_weights(tmp_path_factory) -> Path:
    """Tiny random-weight FLUX.2 [klein] sets, distilled and base, in the layout of the real repositories."""
    pytest.importorskip("diffusers")
    from pipelines.models.tiny import make_tiny

    out = tmp_path_factory.mktemp("flux2-weights")
    make_tiny(out, sets=("flux2-klein", "flux2-klein-base"))
    return out


def wait_ready(client, timeout_s: float = 60.0) -> None:
    """Block until the app's engines are loaded and warm (they start in the background)."""
    import time

    end = time.monotonic() + timeout_s
    while client.get("/health/ready").status_code != 200:
        if time.monotonic() > end:
            raise TimeoutError(client.get("/health/ready").json())
        time.sleep(0.02)
