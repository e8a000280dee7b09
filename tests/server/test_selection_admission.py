"""Selection is paid work, admitted before it costs anything: a key refused for credits, caps or rate answers before
any image is decoded or selected, on every route that selects; requests refused by a full selection queue are not
decoded; a selection past its deadline stops its work, not only its answer."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import server.inputs.decode as decode_module
from pipelines import CompositeEngine
from pipelines.masks import GrabCutSegmenter
from server.api.app import create_app
from server.api.live_server import live_server
from server.cli.main import main
from server.settings import Settings
from tests.conftest import b64, png_bytes, rect_mask, wait_ready

SIDE = 200
BOX = [0, 0, SIDE, SIDE]  # the whole image: the largest selection the image allows
ROUTES = ("/v1/seg-swap", "/v2/seg-swap", "/v1/seg-mask", "/v1/images/edits")


class CountingSegmenter(GrabCutSegmenter):
    """The real GrabCut, counting the selections it is asked for."""

    def __init__(self):
        self.calls = 0

    def select(self, image, selector, stop=None):
        self.calls += 1
        return super().select(image, selector, stop)


def scene() -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), (120, 140, 160))
    image.paste((200, 60, 40), (50, 50, 150, 150))
    return image


def select_on(client: TestClient, route: str, key: str) -> httpx.Response:
    """A request to `route` that selects the whole scene by a box."""
    headers = {"x-api-key": key}
    if route == "/v1/images/edits":
        files = [("image[]", png_bytes(scene())), ("image[]", png_bytes(Image.new("RGB", (20, 20), (0, 0, 255))))]
        return client.post(route, files=files, data={"prompt": "x", "box": ",".join(map(str, BOX))}, headers=headers)
    body = {"main_image": b64(scene()), "box": BOX}
    if route != "/v1/seg-mask":
        body["object_image"] = b64(Image.new("RGB", (20, 20), (0, 0, 255)))
    return client.post(route, json=body, headers=headers)


@pytest.fixture()
def keyed(tmp_path, capsys, monkeypatch):
    """Keys with no credit, with no balance (not metered) and with a rate of one request a minute; an app maker
    whose selections are counted."""
    keys_file, ledger = tmp_path / "keys.toml", tmp_path / "credits.sqlite3"
    monkeypatch.setenv("SEGSWAP_CREDITS_DB", str(ledger))
    secrets = {}
    for key_id, extra in [("broke", ["--credits", "0"]), ("free", []), ("limited", ["--rate", "1"])]:
        assert main(["keys", "--keys-file", str(keys_file), "add", key_id, *extra]) == 0
        secrets[key_id] = capsys.readouterr().out.strip()

    def make(**overrides) -> tuple[TestClient, CountingSegmenter]:
        settings = Settings(keys_file=keys_file, credits_db=ledger, jobs_dir=tmp_path / "jobs", **overrides)
        app = create_app(settings, CompositeEngine())
        app.state.selection._segmenter = counting = CountingSegmenter()
        return TestClient(app), counting

    return make, secrets


@pytest.mark.parametrize("route", ROUTES)
def test_a_key_without_credit_is_refused_before_any_selection(keyed, route):
    make, secrets = keyed
    client, selections = make()
    with client:
        wait_ready(client)
        answer = select_on(client, route, secrets["broke"])
        assert answer.status_code == 406 and "insufficient credits" in answer.text
        assert selections.calls == 0
        assert select_on(client, route, secrets["free"]).status_code == 200  # the same request, paid: selected
        assert selections.calls == 1


@pytest.mark.parametrize(
    ("cap", "message"), [({"max_stored_jobs_per_key": 1}, "stored jobs"), ({"max_stored_bytes_per_key": 256}, "bytes")]
)
def test_a_key_at_its_stored_jobs_cap_is_refused_before_any_selection(keyed, cap, message):
    make, secrets = keyed
    client, selections = make(**cap)
    with client:
        wait_ready(client)
        painted = {
            "main_image": b64(Image.new("RGB", (8, 8))),
            "mask_image": b64(rect_mask((8, 8), (2, 2, 6, 6))),
            "object_image": b64(Image.new("RGB", (4, 4))),
        }
        if "max_stored_jobs_per_key" in cap:  # one job stored: the key is at its cap
            assert client.post("/v2/seg-swap", json=painted, headers={"x-api-key": secrets["free"]}).status_code == 200
        answer = select_on(client, "/v2/seg-swap", secrets["free"])
        assert answer.status_code == 429 and message in answer.json()["error"]
        assert selections.calls == 0


def test_a_rate_limited_key_is_refused_before_any_selection(keyed):
    make, secrets = keyed
    client, selections = make()
    with client:
        wait_ready(client)
        assert select_on(client, "/v1/seg-mask", secrets["limited"]).status_code == 200  # its one request a minute
        for route in ROUTES:
            answer = select_on(client, route, secrets["limited"])
            assert answer.status_code == 429 and "rate limit" in answer.text, route
        assert selections.calls == 1


class GatedSegmenter:
    """Holds the selection turn until the test opens the gate."""

    name = "gated"

    def __init__(self):
        self.entered, self.gate = threading.Event(), threading.Event()

    def select(self, image, selector, stop=None):
        self.entered.set()
        self.gate.wait(20)
        return np.ones((image.height, image.width), bool)


def test_requests_refused_by_a_full_selection_queue_are_not_decoded(monkeypatch):
    """One selecting, one waiting (max_queue 1): three more are refused with 429, and only the two admitted
    requests' images were ever decoded."""
    decoded = []
    real_decode = decode_module.decode_image

    def counting_decode(data, field, max_pixels):
        decoded.append(field)
        return real_decode(data, field, max_pixels)

    monkeypatch.setattr(decode_module, "decode_image", counting_decode)
    app = create_app(Settings(api_keys=["k"], max_queue=1, request_timeout_s=30), CompositeEngine())
    app.state.selection._segmenter = segmenter = GatedSegmenter()
    body = {"main_image": b64(scene()), "box": BOX}

    async def burst(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": "k"}, timeout=30) as http:
            first = asyncio.create_task(http.post("/v1/seg-mask", json=body))
            await asyncio.to_thread(segmenter.entered.wait, 10)
            second = asyncio.create_task(http.post("/v1/seg-mask", json=body))
            while app.state.selection._waiting < 1:
                await asyncio.sleep(0.01)
            refused = [(await http.post("/v1/seg-mask", json=body)).status_code for _ in range(3)]
            assert len(decoded) == 1, decoded  # the waiting request holds its bytes, not its pixels
            segmenter.gate.set()
            return [(await first).status_code, (await second).status_code, *refused]

    with live_server(app) as url:
        try:
            codes = asyncio.run(burst(url))
        finally:
            segmenter.gate.set()
    assert codes == [200, 200, 429, 429, 429]
    assert decoded == ["main_image", "main_image"]


class UntilStopped:
    """A selection that works until it is told to stop (a minute at most), noting when it ended."""

    name = "until-stopped"

    def __init__(self):
        self.ended_at: float | None = None

    def select(self, image, selector, stop=None):
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up and not (stop is not None and stop()):
            time.sleep(0.01)
        self.ended_at = time.monotonic()
        return np.ones((image.height, image.width), bool)


def test_a_selection_past_its_deadline_stops_its_work():
    """Past the deadline the answer is a 504 and the selection is told to stop: its work ends right after (it used
    to run to its end, a core busy for as long again). GrabCut stops at its next step when told
    (tests/pipelines/test_masks.py)."""
    settings = Settings(api_keys=["k"], request_timeout_s=1)
    app = create_app(settings, CompositeEngine())
    app.state.selection._segmenter = segmenter = UntilStopped()
    running = app.state.selection._running  # held by the thread doing the selection's work
    with TestClient(app, headers={"x-api-key": "k"}) as client:
        wait_ready(client)
        answer = client.post(
            "/v1/seg-mask", files={"main_image": png_bytes(Image.new("RGB", (SIDE, SIDE)))}, data={"box": "0,0,100,100"}
        )
        answered = time.monotonic()
        assert answer.status_code == 504, answer.text
        assert running.acquire(timeout=60)
        running.release()
    assert segmenter.ended_at is not None and segmenter.ended_at - answered < 2.0, "it kept working after its 504"
