"""A batch sent to a running server instead: v2 submit, poll, fetch, N jobs at a time; the same files out.

Every answer of the server is untrusted: the output is fetched from the path this client builds from the request
id (on the configured server only: a URL the server names is never followed, so the key goes nowhere else), the
request id must look like one, the answers must be JSON objects with the fields used, and the output must be an
image in the format asked for. Anything else fails that line in one sentence, with nothing written.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import time
from pathlib import Path

import httpx
from PIL import Image

from pipelines import InvalidInput
from server.experiments.batch import Summary, metadata, pending
from server.experiments.jobs_file import Entry
from server.experiments.outputs import write_output
from server.inputs.decode import is_url
from server.inputs.resolve import read_source
from server.settings import Settings

POLL_S = 0.5
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class RemoteFailure(Exception):
    """The server refused the job or the job failed; the message is the server's."""


async def run_remote(
    entries: list[Entry],
    server: str,
    key: str,
    out_dir: Path,
    concurrency: int,
    timeout_s: float,
    settings: Settings,
    progress=None,
) -> Summary:
    """Every pending entry sent to `server`; image paths are read as a local batch reads them (`settings`' caps)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    todo = pending(entries, out_dir, summary)
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    headers = {"x-api-key": key}
    async with httpx.AsyncClient(base_url=server.rstrip("/"), headers=headers, timeout=60) as client:

        async def one(entry: Entry) -> None:
            async with gate:
                try:
                    await _run_one(client, entry, out_dir, timeout_s, settings)
                    summary.done += 1
                except InvalidInput as exc:  # an image path that is no regular file, or too large
                    summary.failed.append((entry.name, f"line {entry.line}: {exc.describe()}"))
                except (RemoteFailure, httpx.HTTPError, OSError, TimeoutError) as exc:
                    summary.failed.append((entry.name, f"line {entry.line}: {exc}"))
                if progress is not None:
                    progress(entry)

        await asyncio.gather(*(one(entry) for entry in todo))
    summary.seconds = time.perf_counter() - start
    return summary


async def _run_one(
    client: httpx.AsyncClient, entry: Entry, out_dir: Path, timeout_s: float, settings: Settings
) -> None:
    body = entry.request.model_dump(exclude={"base64"})
    for name, source in entry.sources.items():  # a URL is the server's to fetch
        body[name] = source if is_url(source) else base64.b64encode(read_source(source, name, settings)).decode()
    request_id = _field(_answer(await client.post("/v2/seg-swap", json=body)), "request_id", str)
    if not REQUEST_ID.fullmatch(request_id):
        raise RemoteFailure(f"the server answered an unusable request id {request_id[:80]!r}")
    deadline = time.monotonic() + timeout_s
    while (status := _answer(await client.get(f"/v2/requests/{request_id}/status"))).get("status") not in TERMINAL:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the job {request_id} did not finish within {timeout_s:g} s")
        await asyncio.sleep(POLL_S)
    if status["status"] != "COMPLETED":
        reason = _printable(str(status.get("error", "no reason given")))[:200]
        raise RemoteFailure(f"the job {request_id} ended {status['status']}: {reason}")
    result = _answer(await client.get(f"/v2/requests/{request_id}"))
    seed = _field(result, "seed", int)
    seconds = _field(_field(status, "metrics", dict), "inference_time", (int, float))
    output = await client.get(f"/v2/requests/{request_id}/output")  # never a URL the server names: the key stays
    _raise_for_error(output)
    _check_image(output.content, entry.request.image_format)
    info = metadata(entry, seed, f"server {client.base_url}", seconds)
    info["request_id"] = request_id
    write_output(out_dir, entry.name, entry.request.image_format, output.content, info)


def _answer(response: httpx.Response) -> dict:
    """The server's JSON object, or a one-line failure (an error status, HTML, a list, garbage)."""
    _raise_for_error(response)
    try:
        data = response.json()
    except ValueError:
        raise RemoteFailure(f"the server's answer is not JSON (HTTP {response.status_code})") from None
    if not isinstance(data, dict):
        raise RemoteFailure("the server's answer is not a JSON object")
    return data


def _field(data: dict, name: str, kind):
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RemoteFailure(f"the server's answer has no usable '{name}'")
    return value


def _check_image(data: bytes, image_format: str) -> None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            found = image.format
            image.verify()
    except Exception:  # noqa: BLE001  (Pillow raises many types for bytes that are not an image)
        raise RemoteFailure("the server's output is not an image") from None
    if found != PIL_FORMATS[image_format]:
        raise RemoteFailure(f"the server's output is {found}, not the {image_format} asked for")


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code != 200:
        try:
            data = response.json()
            message = data.get("error", response.text) if isinstance(data, dict) else response.text
        except ValueError:
            message = response.text[:200]
        raise RemoteFailure(f"HTTP {response.status_code}: {_printable(str(message))[:200]}")


def _printable(text: str) -> str:
    """The server's words on one line, without control characters (a terminal would obey them)."""
    return "".join(c if c.isprintable() else " " for c in text)
