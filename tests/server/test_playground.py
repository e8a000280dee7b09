"""The playground driven end to end in headless Chromium, against a live server on the composite engine.

Needs the `playwright` package and Debian's Chromium (scripts/install_browser.sh); skipped without them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import CompositeEngine
from server.api.app import create_app
from server.api.live_server import live_server
from server.api.playground import mount_playground
from server.settings import Settings
from tests.conftest import rect_mask
from tests.pipelines.grids import assert_grid, cell_centres, disk_tile, red_components
from tests.server.engines import SteppingEngine

REQUIRED = os.environ.get("SEGSWAP_REQUIRE_BROWSER") == "1"  # CI: the browser tests run or the run fails
CHROMIUM = Path(os.environ.get("SEGSWAP_CHROMIUM", "/usr/bin/chromium"))
if REQUIRED:
    import playwright.sync_api as sync_api

    assert CHROMIUM.exists(), f"SEGSWAP_REQUIRE_BROWSER=1 but there is no Chromium at {CHROMIUM}"
else:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/install_browser.sh installs it)", allow_module_level=True)

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "test-output" / "playground.png"
KEY = "playground-key-0123456789"
MAIN_SIZE = (1200, 800)  # larger than its place on the page: painting must map display to natural pixels
OBJECT_SIZE = (60, 40)
PAGE_PATHS = {
    "/",
    "/playground/app.js",
    "/playground/style.css",
    "/v1/seg-swap",
    "/v1/seg-mask",
    "/v2/seg-swap",
    "/v1/models",
}
JOB_PATH = re.compile(r"/v2/requests/[0-9a-f-]+(/events|/output)?")  # a run's job: its events, its output
expect = sync_api.expect


@dataclass
class Session:
    page: sync_api.Page
    url: str
    problems: list[str] = field(default_factory=list)  # uncaught exceptions, CSP refusals, other console errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app and its URL."""
    app = create_app(Settings(api_keys=[KEY], jobs_dir=tmp_path_factory.mktemp("jobs")), CompositeEngine())
    mount_playground(app)
    with live_server(app) as url:
        yield app, url


@pytest.fixture(scope="module")
def server_url(served) -> str:
    return served[1]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def session(browser, server_url):
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    session = Session(page, server_url)
    page.on("pageerror", lambda exc: session.problems.append(str(exc)))
    page.on("console", lambda message: _console_problem(session, message))
    page.on("request", lambda request: session.requests.append(request.url))
    page.goto(f"{server_url}/")
    yield session
    context.close()


def _console_problem(session: Session, message) -> None:
    # Chromium logs every non-2xx answer as "Failed to load resource"; the error tests cause those on purpose.
    if message.type == "error" and not message.text.startswith("Failed to load resource"):
        session.problems.append(message.text)


def write_inputs(folder: Path) -> tuple[Path, Path, Image.Image]:
    width, height = MAIN_SIZE
    y, x = np.mgrid[0:height, 0:width]
    main = Image.fromarray(
        np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 140)], axis=-1).astype(np.uint8)
    )
    obj = Image.new("RGB", OBJECT_SIZE, (250, 140, 20))
    ImageDraw.Draw(obj).rectangle((0, 15, 59, 24), fill=(30, 60, 200))
    main.save(folder / "main.png")
    obj.save(folder / "object.png")
    return folder / "main.png", folder / "object.png", main


def load_inputs(page, main_path: Path, object_path: Path) -> None:
    page.set_input_files("#main-file", str(main_path))
    expect(page.locator("#stage")).to_be_visible()
    page.set_input_files("#object-file", str(object_path))
    expect(page.locator("#tile-preview")).to_be_visible()


def set_range(page, selector: str, value: int) -> None:
    page.eval_on_selector(
        selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", str(value)
    )


def paint_stroke(page, start: tuple[float, float], end: tuple[float, float]) -> float:
    """Drag the brush from `start` to `end` (fractions of the image); returns natural pixels per display pixel."""
    box = page.locator("#mask-canvas").bounding_box()
    x0, y0 = box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"]
    x1, y1 = box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=12)
    page.mouse.up()
    return MAIN_SIZE[0] / box["width"]


def download(page, selector: str) -> bytes:
    with page.expect_download() as info:
        page.click(selector)
    return Path(info.value.path()).read_bytes()


def run_snippet(command: list[str], folder: Path) -> bytes:
    subprocess.run(
        command, cwd=folder, env={**os.environ, "SEGSWAP_API_KEY": KEY}, check=True, timeout=120, capture_output=True
    )
    return (folder / "result.png").read_bytes()


def test_paint_run_and_get_the_result(session, served, tmp_path):
    page = session.page
    main_path, object_path, main = write_inputs(tmp_path)
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model_set option").first).to_have_text("server default (composite)")  # GET /v1/models
    load_inputs(page, main_path, object_path)
    set_range(page, "#horizontal_repeat", 3)
    width, height = page.eval_on_selector("#tile-preview", "canvas => [canvas.width, canvas.height]")
    assert abs(width / height - 3 * OBJECT_SIZE[0] / OBJECT_SIZE[1]) < 0.05  # the live preview follows the repeats
    set_range(page, "#growmask", 0)
    page.fill("#seed", "7")
    set_range(page, "#brush-size", 30)
    scale = paint_stroke(page, (0.3, 0.5), (0.6, 0.5))
    assert scale > 1.5  # the image is shown smaller than it is

    mask = np.asarray(Image.open(io.BytesIO(download(page, "#save-mask"))).convert("L"))
    assert mask.shape == (MAIN_SIZE[1], MAIN_SIZE[0]) and set(np.unique(mask)) == {0, 255}
    rows, cols = np.nonzero(mask)
    radius = 15 * scale
    expected = (
        0.3 * MAIN_SIZE[0] - radius,
        0.5 * MAIN_SIZE[1] - radius,
        0.6 * MAIN_SIZE[0] + radius,
        0.5 * MAIN_SIZE[1] + radius,
    )
    assert np.allclose((cols.min(), rows.min(), cols.max(), rows.max()), expected, atol=3)

    page.click("#run")
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    expect(page.locator("#result-info")).to_contain_text("engine composite")
    expect(page.locator("#result-info")).to_contain_text("seed 7")
    assert page.eval_on_selector("#result-after", "img => [img.naturalWidth, img.naturalHeight]") == list(MAIN_SIZE)
    result_bytes = download(page, "#download")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    result = np.asarray(Image.open(io.BytesIO(result_bytes)).convert("RGB")).astype(int)
    assert result.shape == np.asarray(main).shape
    changed = np.abs(result - np.asarray(main).astype(int)).sum(axis=2) > 0
    painted = mask > 127
    assert changed[painted].mean() > 0.5  # the composite engine fits the tiles inside the mask box
    assert not changed[~painted].any()  # growmask 0: not one pixel outside the painted mask
    assert changed[MAIN_SIZE[1] // 2, int(0.35 * MAIN_SIZE[0]) : int(0.55 * MAIN_SIZE[0])].all()  # along the stroke
    assert not changed[: MAIN_SIZE[1] // 4, : MAIN_SIZE[0] // 4].any()  # far from it

    assert_the_snippets_make_the_same_image(page, tmp_path, mask, result_bytes)
    jobs = served[0].state.jobs.store.db.execute("SELECT priority FROM jobs").fetchall()
    assert jobs and {job["priority"] for job in jobs} == {"interactive"}  # someone waits: ahead of batch work
    for url in session.requests:
        if not url.startswith(("blob:", "data:")):
            path = urlsplit(url).path
            assert url.startswith(f"{session.url}/") and (path in PAGE_PATHS or JOB_PATH.fullmatch(path)), url
    assert session.problems == []


def assert_the_snippets_make_the_same_image(page, folder: Path, mask: np.ndarray, result_bytes: bytes) -> None:
    curl = page.text_content("#snippet-curl")
    python = page.text_content("#snippet-python")
    for flag in (
        "-F main_image=@main.png",
        "-F mask_image=@mask.png",
        "-F object_image=@object.png",
        "-F seed=7",
        "-F growmask=0",
        "-F horizontal_repeat=3",
        '-H "x-api-key: $SEGSWAP_API_KEY"',
    ):
        assert flag in curl, flag
    assert KEY not in curl + python and "base64" not in curl + python and len(curl + python) < 2000
    Image.fromarray(mask).save(folder / "mask.png")
    assert same_image(run_snippet(["bash", "-c", curl], folder), result_bytes)
    assert "import httpx" in python  # the client segswap installs: the snippet runs where the server was installed
    (folder / "result.png").unlink()
    assert same_image(run_snippet([sys.executable, "-c", python], folder), result_bytes)


def same_image(data: bytes, expected: bytes) -> bool:
    """The same pixels and the same record, but for the mask's digest: the mask.png saved here is the page's
    mask encoded again, so its bytes (and sha256) differ from the ones the page sent."""
    from server.inputs.metadata import read

    images = [Image.open(io.BytesIO(blob)) for blob in (data, expected)]
    records = [read(image) for image in images]
    for record in records:
        record["inputs"].pop("mask_image")
    return np.array_equal(*(np.asarray(image) for image in images)) and records[0] == records[1]


@pytest.fixture(scope="module")
def stepping_url(tmp_path_factory) -> str:
    """A server whose engine reports six steps with a preview after each, 0.3 s apart."""
    settings = Settings(api_keys=[KEY], jobs_dir=tmp_path_factory.mktemp("stepping-jobs"))
    app = create_app(settings, SteppingEngine(steps=6, delay=0.3))
    mount_playground(app)
    with live_server(app) as url:
        yield url


def test_a_run_shows_its_steps_and_previews_then_the_result(browser, stepping_url, tmp_path):
    """The page runs a v2 job and follows its event stream: the bar rises with the steps, previews show, and
    the result comes from the job's output."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(f"{stepping_url}/")
    page.fill("#api-key", KEY)
    main_path, object_path, _ = write_inputs(tmp_path)
    load_inputs(page, main_path, object_path)
    paint_stroke(page, (0.3, 0.5), (0.6, 0.5))
    page.fill("#seed", "11")
    page.click("#run")
    expect(page.locator("#progress-steps")).to_have_text(re.compile(r"step [2-5] of 6"), timeout=10_000)
    assert 0 < page.eval_on_selector("#progress-bar", "bar => bar.value / bar.max") < 1
    expect(page.locator("#progress-preview")).to_be_visible()
    assert page.get_attribute("#progress-preview", "src").startswith("data:image/jpeg;base64,")
    expect(page.locator("#compare")).to_be_visible(timeout=15_000)
    expect(page.locator("#result-info")).to_contain_text("engine stepping")
    expect(page.locator("#result-info")).to_contain_text("seed 11")
    expect(page.locator("#status")).to_contain_text("Done in")
    expect(page.locator("#progress")).to_be_hidden()
    assert problems == []
    context.close()


def test_server_errors_are_shown_as_readable_messages(session, tmp_path):
    page = session.page
    error = page.locator("#error")
    page.click("#run")
    expect(error).to_contain_text("Add a main image")
    main_path, object_path, _ = write_inputs(tmp_path)
    load_inputs(page, main_path, object_path)
    paint_stroke(page, (0.4, 0.4), (0.5, 0.5))

    page.fill("#api-key", "wrong-key")
    page.click("#run")
    expect(error).to_contain_text("401 Unauthorized: invalid API key")
    expect(error).to_contain_text("Check the API key field")

    page.fill("#api-key", KEY)
    page.fill("#steps", "5")
    expect(page.locator("#snippet-curl")).to_contain_text("-F steps=5")
    page.click("#run")
    expect(error).to_contain_text("400 Bad request: field 'steps': input should be greater than or equal to 10")

    page.fill("#steps", "30")
    page.click("#clear")
    page.click("#run")
    expect(error).to_contain_text("400 Bad request: field 'mask_image': the mask selects no pixel")
    expect(page.locator("#run")).to_be_enabled()

    page.reload()
    expect(page.locator("#api-key")).to_have_value(KEY)  # kept in localStorage
    assert session.problems == []


STATUS_CASES = [
    (403, {}, "this API key is not allowed to use /v1/seg-swap", ["403 Forbidden"]),
    (406, {}, "insufficient credits: this key has 0, an image costs 1", ["406 Not acceptable"]),
    (413, {}, "the request body is larger than 2000000 bytes", ["413 Too large", "use smaller images"]),
    (
        429,
        {"Retry-After": "7"},
        "the server is busy (queue full); retry in 7 s",
        ["429 Too many requests", "Retry after 7 s."],
    ),
    (503, {"Retry-After": "5"}, "the engine is still loading", ["503 Unavailable", "Retry after 5 s."]),
    (504, {}, "the request did not finish within 300 s", ["504 Timed out"]),
]


def test_every_error_status_and_a_network_failure_read_clearly(session, tmp_path):
    """Statuses a small test server cannot easily produce, answered by the browser's request interception."""
    page = session.page
    error = page.locator("#error")
    main_path, object_path, _ = write_inputs(tmp_path)
    load_inputs(page, main_path, object_path)
    paint_stroke(page, (0.4, 0.4), (0.5, 0.5))
    answer: dict = {}

    def fulfil(route) -> None:
        if answer.get("abort"):
            route.abort("failed")
        else:
            route.fulfill(
                status=answer["status"],
                headers={**answer["headers"], "x-request-id": "req-123"},
                content_type=answer.get("type", "application/json"),
                body=answer["body"],
            )

    page.route("**/v2/seg-swap", fulfil)  # a run submits a v2 job
    for status, headers, sentence, fragments in STATUS_CASES:
        answer.update(status=status, headers=headers, body=json.dumps({"error": sentence}))
        page.click("#run")
        for fragment in [f"{status} ", sentence, "Request id: req-123.", *fragments]:
            expect(error).to_contain_text(fragment)
        expect(page.locator("#run")).to_be_enabled()

    answer.update(status=502, headers={}, body="<html><h1>Bad Gateway</h1></html>", type="text/html")
    page.click("#run")
    expect(error).to_contain_text("502 Bad gateway: (the server sent no error message)")

    answer["abort"] = True
    page.click("#run")
    expect(error).to_contain_text("Network error: no answer from the server")
    expect(page.locator("#progress")).to_be_hidden()
    assert session.problems == []


PAINTED_PIXELS = """() => {
  const canvas = document.querySelector('#mask-canvas');
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) count += data[i] >= 128;
  return count;
}"""

HAND_OVER = """([kind, selector, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], 'image.png', {type: 'image/png'}));
  const target = document.querySelector(selector);
  const event = kind === 'paste'
    ? new ClipboardEvent('paste', {clipboardData: transfer, bubbles: true})
    : new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true});
  target.dispatchEvent(event);
}"""


def hand_over(page, kind: str, selector: str, path: Path) -> None:
    """Paste (clipboard) or drop (drag and drop) the image file at `path` on `selector`."""
    page.evaluate(HAND_OVER, [kind, selector, base64.b64encode(path.read_bytes()).decode()])


def test_paste_drop_and_the_mask_tools(session, tmp_path):
    page = session.page
    main_path, object_path, _ = write_inputs(tmp_path)
    hand_over(page, "paste", "body", main_path)
    expect(page.locator("#stage")).to_be_visible()
    assert page.eval_on_selector("#mask-canvas", "c => [c.width, c.height]") == list(MAIN_SIZE)
    hand_over(page, "drop", "#object-drop", object_path)
    expect(page.locator("#tile-preview")).to_be_visible()
    expect(page.locator("#tile-note")).to_contain_text("Object 60×40")

    set_range(page, "#brush-size", 40)
    paint_stroke(page, (0.2, 0.5), (0.8, 0.5))
    painted = page.evaluate(PAINTED_PIXELS)
    page.keyboard.press("e")
    paint_stroke(page, (0.5, 0.3), (0.5, 0.7))
    erased = page.evaluate(PAINTED_PIXELS)
    assert 0 < erased < painted
    page.keyboard.press("Control+z")
    assert page.evaluate(PAINTED_PIXELS) == painted
    page.click("#invert")
    assert page.evaluate(PAINTED_PIXELS) == MAIN_SIZE[0] * MAIN_SIZE[1] - painted
    page.click("#clear")
    assert page.evaluate(PAINTED_PIXELS) == 0
    page.click("#undo")
    assert page.evaluate(PAINTED_PIXELS) == MAIN_SIZE[0] * MAIN_SIZE[1] - painted

    # An uploaded mask of another size is stretched nearest-neighbour, as the server would do.
    small = Image.new("L", (MAIN_SIZE[0] // 4, MAIN_SIZE[1] // 4), 0)
    ImageDraw.Draw(small).rectangle((10, 20, 59, 39), fill=255)
    small.save(tmp_path / "small_mask.png")
    page.set_input_files("#mask-file", str(tmp_path / "small_mask.png"))
    expect(page.locator("#undo")).to_be_enabled()
    page.wait_for_function(f"() => ({PAINTED_PIXELS})() === {50 * 20 * 16}")
    sent = Image.open(io.BytesIO(download(page, "#save-mask"))).convert("L")
    assert np.array_equal(np.asarray(sent), np.asarray(small.resize(MAIN_SIZE, Image.Resampling.NEAREST)))

    # A transparent mask carries the region in its alpha channel.
    alpha = Image.new("RGBA", MAIN_SIZE, (0, 0, 0, 0))
    ImageDraw.Draw(alpha).rectangle((100, 100, 199, 149), fill=(0, 0, 0, 255))
    alpha.save(tmp_path / "alpha_mask.png")
    page.set_input_files("#mask-file", str(tmp_path / "alpha_mask.png"))
    page.wait_for_function(f"() => ({PAINTED_PIXELS})() === {100 * 50}")
    assert session.problems == []


def preview_pixels(page) -> np.ndarray:
    """The tile preview canvas as an RGB array."""
    url = page.eval_on_selector("#tile-preview", "canvas => canvas.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


def test_the_tile_preview_shows_the_grid_the_engine_places(session, tmp_path):
    """The live preview is the engine's grid: h tiles across the grown mask's box and v down, at its aspect,
    for wide and tall boxes; in object mode the object whole. A run puts the same grid in the image."""
    page = session.page
    main_path, _, _ = write_inputs(tmp_path)
    disk_tile().save(tmp_path / "disk.png")
    page.fill("#api-key", KEY)
    load_inputs(page, main_path, tmp_path / "disk.png")
    set_range(page, "#growmask", 12)
    set_range(page, "#horizontal_repeat", 2)  # a pattern: the preview is the grid over the mask's box
    boxes = {"wide": (100, 300, 1099, 499), "tall": (500, 40, 699, 759)}  # inclusive, as drawn
    for shape, drawn in boxes.items():
        Image.fromarray(np.asarray(rect_mask(MAIN_SIZE, drawn))).save(tmp_path / f"{shape}.png")
        page.set_input_files("#mask-file", str(tmp_path / f"{shape}.png"))
        grown = (drawn[0] - 12, drawn[1] - 12, drawn[2] + 13, drawn[3] + 13)
        expect(page.locator("#tile-note")).to_contain_text(f"{grown[2] - grown[0]}×{grown[3] - grown[1]} px box")
        for across, down in [(4, 2), (1, 5), (7, 1), (3, 3)]:
            set_range(page, "#horizontal_repeat", across)
            set_range(page, "#vertical_repeat", down)
            preview = preview_pixels(page)
            height, width = preview.shape[:2]
            box_size = np.array([grown[2] - grown[0], grown[3] - grown[1]])
            assert np.allclose((width, height), box_size * 240 / box_size.max(), atol=0.5)  # its shape, in 240 px
            assert_grid(red_components(preview), cell_centres((0, 0, width, height), across, down), tolerance=1.0)

    set_range(page, "#horizontal_repeat", 3)
    set_range(page, "#vertical_repeat", 2)
    page.click("#run")
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    result = np.asarray(Image.open(io.BytesIO(download(page, "#download"))).convert("RGB"))
    inside = result[grown[1] : grown[3], grown[0] : grown[2]]  # the tall box, tiled as previewed
    assert_grid(red_components(inside), cell_centres((0, 0, *inside.shape[1::-1]), 3, 2), tolerance=1.5)

    page.select_option("#mode", "object")
    preview = preview_pixels(page)
    assert preview.shape[:2] == (240, 240) and len(red_components(preview)) == 1  # the object whole, its aspect
    expect(page.locator("#tile-note")).to_contain_text("placed whole")
    assert session.problems == []


def test_select_a_box_see_the_mask_refine_it_and_run(session, tmp_path):
    """The select tool: a box dragged around an object comes back as its mask (POST /v1/seg-mask, GrabCut on
    this server), shown over the image; the brush then adds to it, and Run swaps inside it."""
    page = session.page
    width, height = MAIN_SIZE
    main = Image.new("RGB", MAIN_SIZE, (70, 110, 160))
    ImageDraw.Draw(main).ellipse((420, 260, 780, 560), fill=(235, 60, 40))
    truth = np.asarray(Image.new("L", MAIN_SIZE, 0)).copy()
    truth_image = Image.fromarray(truth)
    ImageDraw.Draw(truth_image).ellipse((420, 260, 780, 560), fill=255)
    truth = np.asarray(truth_image) > 127
    main.save(tmp_path / "main.png")
    Image.new("RGB", OBJECT_SIZE, (20, 200, 90)).save(tmp_path / "object.png")
    page.fill("#api-key", KEY)
    load_inputs(page, tmp_path / "main.png", tmp_path / "object.png")
    page.check("input[name=tool][value=select]")

    box = page.locator("#mask-canvas").bounding_box()
    corner = (box["x"] + 400 / width * box["width"], box["y"] + 240 / height * box["height"])
    page.mouse.move(*corner)
    page.mouse.down()
    page.mouse.move(box["x"] + 800 / width * box["width"], box["y"] + 580 / height * box["height"], steps=8)
    expect(page.locator("#select-box")).to_be_visible()
    page.mouse.up()
    expect(page.locator("#status")).to_contain_text("Selected by grabcut", timeout=30_000)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.locator("#main-panel").screenshot(path=str(SCREENSHOT.with_name("playground-select.png")))

    selected = np.asarray(Image.open(io.BytesIO(download(page, "#save-mask"))).convert("L")) > 127
    assert (selected & truth).sum() / (selected | truth).sum() > 0.9
    painted = page.evaluate(PAINTED_PIXELS)
    assert abs(painted - selected.sum()) < 0.01 * selected.size  # the mask is shown over the image

    page.check("input[name=tool][value=brush]")
    set_range(page, "#brush-size", 20)
    paint_stroke(page, (0.1, 0.1), (0.2, 0.1))
    refined = np.asarray(Image.open(io.BytesIO(download(page, "#save-mask"))).convert("L")) > 127
    assert refined[selected].all() and refined.sum() > selected.sum()

    set_range(page, "#growmask", 0)
    page.click("#run")
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    result = np.asarray(Image.open(io.BytesIO(download(page, "#download"))).convert("RGB"))
    assert np.array_equal(result[~refined], np.asarray(main)[~refined])
    assert any(urlsplit(url).path == "/v1/seg-mask" for url in session.requests)
    assert session.problems == []


def test_paint_and_erase_with_no_object_leaves_everything_outside_the_mask(session, tmp_path):
    """Erase needs the main image and a painted mask, no object: the region is filled (composite engine) and not
    one pixel outside the painted mask changes (growmask 0)."""
    from server.inputs.metadata import read

    page = session.page
    main_path, _, main = write_inputs(tmp_path)
    page.fill("#api-key", KEY)
    expect(page.locator("#erase")).to_be_disabled()
    page.set_input_files("#main-file", str(main_path))
    expect(page.locator("#stage")).to_be_visible()
    expect(page.locator("#erase")).to_be_disabled()  # nothing painted yet
    set_range(page, "#growmask", 0)
    set_range(page, "#brush-size", 30)
    paint_stroke(page, (0.3, 0.5), (0.6, 0.5))
    expect(page.locator("#erase")).to_be_enabled()
    painted = np.asarray(Image.open(io.BytesIO(download(page, "#save-mask"))).convert("L")) > 127

    page.click("#erase")
    expect(page.locator("#compare")).to_be_visible(timeout=30_000)
    expect(page.locator("#result-info")).to_contain_text("engine composite")
    result_bytes = download(page, "#download")
    result = np.asarray(Image.open(io.BytesIO(result_bytes)).convert("RGB")).astype(int)
    changed = np.abs(result - np.asarray(main).astype(int)).sum(axis=2) > 0
    assert not changed[~painted].any()  # not one pixel outside the painted mask
    assert changed[painted].mean() > 0.5  # the stroke's content was replaced by the fill
    record = read(Image.open(io.BytesIO(result_bytes)))
    assert record["parameters"]["mode"] == "erase" and set(record["inputs"]) == {"main_image", "mask_image"}

    page.click("#clear")
    expect(page.locator("#erase")).to_be_disabled()
    page.click("#run")  # Run still needs the object the swap puts in
    expect(page.locator("#error")).to_contain_text("Add an object image")
    assert session.problems == []
