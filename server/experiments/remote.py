"""A batch sent to a running server instead: v2 submit, poll, fetch, N jobs at a time; the same files out."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx

from server.experiments.batch import Summary, metadata, pending
from server.experiments.jobs_file import Entry
from server.experiments.outputs import write_output
from server.inputs.decode import is_url

POLL_S = 0.5
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


class RemoteFailure(Exception):
    """The server refused the job or the job failed; the message is the server's."""


async def run_remote(
    entries: list[Entry], server: str, key: str, out_dir: Path, concurrency: int, timeout_s: float, progress=None
) -> Summary:
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
                    await _run_one(client, entry, out_dir, timeout_s)
                    summary.done += 1
                except (RemoteFailure, httpx.HTTPError, OSError, TimeoutError) as exc:
                    summary.failed.append((entry.name, f"line {entry.line}: {exc}"))
                if progress is not None:
                    progress(entry)

        await asyncio.gather(*(one(entry) for entry in todo))
    summary.seconds = time.perf_counter() - start
    return summary


async def _run_one(client: httpx.AsyncClient, entry: Entry, out_dir: Path, timeout_s: float) -> None:
    body = entry.request.model_dump(exclude={"base64"})
    for name, source in entry.sources.items():
        body[name] = source if is_url(source) else base64.b64encode(Path(source).read_bytes()).decode()
    submitted = await client.post("/v2/seg-swap", json=body)
    _raise_for_error(submitted)
    request_id = submitted.json()["request_id"]
    deadline = time.monotonic() + timeout_s
    while (status := await client.get(f"/v2/requests/{request_id}/status")).json().get("status") not in TERMINAL:
        _raise_for_error(status)
        if time.monotonic() > deadline:
            raise TimeoutError(f"the job {request_id} did not finish within {timeout_s:g} s")
        await asyncio.sleep(POLL_S)
    _raise_for_error(status)
    result = (await client.get(f"/v2/requests/{request_id}")).json()
    output = await client.get(result["output"])
    _raise_for_error(output)
    info = metadata(entry, result["seed"], f"server {client.base_url}", status.json()["metrics"]["inference_time"])
    info["request_id"] = request_id
    write_output(out_dir, entry.name, entry.request.image_format, output.content, info)


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text[:200]
        raise RemoteFailure(f"HTTP {response.status_code}: {message}")
