"""POST /v1/seg-mask and the selectors on /v1/seg-swap (and v2): same contract habits as v1."""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipelines.evaluation.metrics import iou
from pipelines.evaluation.selection import load_selections
from pipelines.imageops import grow_mask, normalize_mask
from tests.conftest import b64

FLOWER = next(case for case in load_selections() if case.name == "flower-box")


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def record(data: bytes) -> dict:
    from server.inputs.metadata import read

    return read(Image.open(io.BytesIO(data)))


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.fixture(scope="module")
def flower() -> str:
    return png_b64(FLOWER.image)


def test_a_box_answers_the_objects_mask_as_png(client, flower):
    response = client.post("/v1/seg-mask", json={"main_image": flower, "box": list(FLOWER.selector.box)})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["x-segswap-segmenter"] == "grabcut"
    mask = Image.open(io.BytesIO(response.content))
    assert mask.size == FLOWER.image.size
    assert iou(np.asarray(mask.convert("L")) > 127, FLOWER.truth) >= 0.85


def test_base64_answers_json_with_the_mask_and_what_made_it(client, flower):
    response = client.post("/v1/seg-mask", json={"main_image": flower, "points": [[300, 220, 1]], "base64": True})
    assert response.status_code == 200
    answer = response.json()
    assert answer["segmenter"] == "grabcut" and 0.05 < answer["selected_share"] < 0.6
    assert Image.open(io.BytesIO(base64.b64decode(answer["mask"]))).size == FLOWER.image.size


def test_a_multipart_form_sends_the_box_as_text(client):
    data = io.BytesIO()
    FLOWER.image.save(data, format="JPEG")
    box = ",".join(str(v) for v in FLOWER.selector.box)
    response = client.post("/v1/seg-mask", files={"main_image": data.getvalue()}, data={"box": box})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({}, "give the region as exactly one of box, points, text"),
        ({"box": [1, 1, 20, 20], "points": [[5, 5, 1]]}, "(got box, points)"),
        ({"box": [0, 0, 9999, 20]}, "field 'box': [0, 0, 9999, 20] reaches outside the 640x427 image"),
        ({"box": [1, 2, 3]}, "field 'box'"),
        ({"points": [[5, 5, 3]]}, "field 'points': a point's label must be 1 (inside) or 0 (outside)"),
        ({"text": "the flower"}, "field 'text': selecting by words needs the sam2 and owlv2 model sets"),
        ({"box": [1, 1, 20, 20], "mask_image": "x"}, "unknown field 'mask_image'"),
    ],
)
def test_a_bad_selection_is_a_400_saying_what_is_wrong(client, flower, extra, message):
    response = client.post("/v1/seg-mask", json={"main_image": flower, **extra})
    assert response.status_code == 400 and message in response.json()["error"]


def test_no_key_no_selection(client, flower):
    response = client.post(
        "/v1/seg-mask", json={"main_image": flower, "box": [1, 1, 20, 20]}, headers={"x-api-key": ""}
    )
    assert response.status_code == 401


def test_seg_swap_takes_a_box_instead_of_a_mask(client, flower):
    """Selected and swapped in one call; every pixel outside the selected region, grown, is the input's own."""
    body = {"main_image": flower, "object_image": b64(Image.new("RGB", (40, 40), (20, 60, 220))), "seed": 3}
    selected = client.post("/v1/seg-mask", json={"main_image": flower, "box": list(FLOWER.selector.box)})
    swapped = client.post("/v1/seg-swap", json={**body, "box": list(FLOWER.selector.box)})
    assert swapped.status_code == 200, swapped.text
    out = np.asarray(Image.open(io.BytesIO(swapped.content)).convert("RGB"))
    region = grow_mask(normalize_mask(Image.open(io.BytesIO(selected.content)), FLOWER.image.size), 5)
    assert np.array_equal(out[~region], np.asarray(FLOWER.image)[~region])
    assert not np.array_equal(out[region], np.asarray(FLOWER.image)[region])
    painted = client.post(
        "/v1/seg-swap", json={**body, "mask_image": png_b64(Image.open(io.BytesIO(selected.content)))}
    )
    # Selecting is the same as sending the selected mask: the same pixels; each file records its own region.
    assert np.array_equal(pixels(painted.content), pixels(swapped.content))
    assert (
        record(swapped.content)["parameters"]["box"] == list(FLOWER.selector.box)
        and "mask_image" not in record(swapped.content)["inputs"]
    )
    assert record(painted.content)["parameters"]["box"] is None and "mask_image" in record(painted.content)["inputs"]


def test_seg_swap_needs_exactly_one_region(client, flower):
    body = {"main_image": flower, "object_image": b64(Image.new("RGB", (40, 40)))}
    none = client.post("/v1/seg-swap", json=body)
    assert none.status_code == 400
    assert (
        none.json()["error"] == "field 'mask_image' is required (or select the region by box, points or text instead)"
    )
    both = client.post("/v1/seg-swap", json={**body, "mask_image": flower, "text": "the flower"})
    assert both.status_code == 400 and "(got mask_image, text)" in both.json()["error"]


def test_a_v2_job_selects_at_submit_and_runs_as_if_painted(client, flower):
    import time

    body = {"main_image": flower, "object_image": b64(Image.new("RGB", (40, 40), (20, 60, 220))), "seed": 3}
    submitted = client.post("/v2/seg-swap", json={**body, "box": list(FLOWER.selector.box)})
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["request_id"]
    for _ in range(200):
        status = client.get(f"/v2/requests/{job}/status").json()["status"]
        if status in ("COMPLETED", "FAILED"):
            break
        time.sleep(0.05)
    assert status == "COMPLETED"
    direct = client.post("/v1/seg-swap", json={**body, "box": list(FLOWER.selector.box)})
    output = client.get(f"/v2/requests/{job}/output").content
    assert np.array_equal(pixels(output), pixels(direct.content))
    assert record(output)["parameters"]["box"] == list(FLOWER.selector.box)


def test_the_schema_documents_the_selectors(client):
    schema = client.get("/openapi.json").json()
    assert "/v1/seg-mask" in schema["paths"]
    swap = schema["paths"]["/v1/seg-swap"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"box", "points", "text"} <= set(swap["properties"]) and "mask_image" not in swap.get("required", [])


@pytest.fixture(scope="module")
def sam2_client(tmp_path_factory):
    """auto with the sam2 and owlv2 sets installed: tiny random weights, loaded as the real repositories are."""
    pytest.importorskip("transformers")
    from fastapi.testclient import TestClient

    from pipelines import CompositeEngine
    from pipelines.models.tiny import make_tiny
    from server.api.app import create_app
    from server.settings import Settings
    from tests.conftest import wait_ready

    weights = tmp_path_factory.mktemp("mask-weights")
    make_tiny(weights, sets=("sam2", "owlv2"))
    app = create_app(Settings(api_keys=["k"], weights_dir=weights), CompositeEngine())
    with TestClient(app, headers={"x-api-key": "k"}) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.mark.parametrize("selection", [{"box": [165, 82, 450, 365]}, {"points": [[300, 220, 1]]}, {"text": "a dahlia"}])
def test_auto_serves_sam2_and_the_detector_when_installed(sam2_client, flower, selection):
    response = sam2_client.post("/v1/seg-mask", json={"main_image": flower, **selection})
    assert response.status_code == 200, response.text
    assert response.headers["x-segswap-segmenter"] == "sam2+owlv2"
    assert Image.open(io.BytesIO(response.content)).size == FLOWER.image.size
    again = sam2_client.post("/v1/seg-mask", json={"main_image": flower, **selection})
    assert again.content == response.content


def test_segswap_mask_and_swap_by_box_on_the_command_line(tmp_path, capsys):
    from server.cli.main import main

    scene = tmp_path / "flower.png"
    FLOWER.image.save(scene)
    Image.new("RGB", (40, 40), (20, 60, 220)).save(tmp_path / "object.png")
    box = ",".join(str(v) for v in FLOWER.selector.box)
    assert main(["mask", "--main", str(scene), "--box", box, "-o", str(tmp_path / "mask.png")]) == 0
    assert "selected by grabcut" in capsys.readouterr().err
    mask = np.asarray(Image.open(tmp_path / "mask.png")) > 127
    assert iou(mask, FLOWER.truth) >= 0.85
    args = ["swap", "--main", str(scene), "--object", str(tmp_path / "object.png"), "--engine", "composite"]
    assert main([*args, "--box", box, "-o", str(tmp_path / "out.png")]) == 0
    assert main([*args, "--mask", str(tmp_path / "mask.png"), "-o", str(tmp_path / "painted.png")]) == 0
    assert np.array_equal(pixels((tmp_path / "out.png").read_bytes()), pixels((tmp_path / "painted.png").read_bytes()))
    assert main(["mask", "--main", str(scene), "--text", "a flower", "-o", str(tmp_path / "m.png")]) == 2
    assert "needs the sam2 and owlv2 model sets" in capsys.readouterr().err


def test_selections_are_counted_and_timed_in_the_metrics(client, flower):
    def counted() -> float:
        for line in client.get("/metrics").text.splitlines():
            if line.startswith('segswap_images_total{engine="mask/grabcut"}'):
                return float(line.split()[-1])
        return 0.0

    before = counted()
    assert client.post("/v1/seg-mask", json={"main_image": flower, "box": [165, 82, 450, 365]}).status_code == 200
    assert counted() == before + 1
    assert 'segswap_stage_seconds_count{stage="selection"}' in client.get("/metrics").text


@pytest.mark.parametrize(
    "raw",
    [
        '{"main_image": "%s", "box": [NaN, 1, 20, 20]}',
        '{"main_image": "%s", "box": [1, 1, Infinity, 20]}',
        '{"main_image": "%s", "points": [[1e400, 2, 1]]}',
    ],
)
def test_non_finite_numbers_are_a_400(client, flower, raw):
    response = client.post(
        "/v1/seg-mask", content=(raw % flower).encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "finite numbers" in response.json()["error"]


def test_arrays_nested_too_deeply_in_a_form_are_a_400(client):
    data = io.BytesIO()
    FLOWER.image.save(data, format="PNG")
    response = client.post("/v1/seg-mask", files={"main_image": data.getvalue()}, data={"box": "[" * 100_000})
    assert response.status_code == 400 and "field 'box'" in response.json()["error"]


def test_seg_swap_by_selection_says_what_selected_it(client, flower):
    body = {"main_image": flower, "object_image": b64(Image.new("RGB", (40, 40))), "box": [165, 82, 450, 365]}
    response = client.post("/v1/seg-swap", json=body)
    assert response.status_code == 200 and response.headers["x-segswap-segmenter"] == "grabcut"
    assert (
        "x-segswap-segmenter"
        not in client.post("/v1/seg-swap", json={**body, "box": None, "mask_image": flower}).headers
    )


class GatedSegmenter:
    """Selects only when the test opens the gate, so requests pile up behind it."""

    name = "gated"

    def __init__(self):
        import threading

        self.gate = threading.Event()

    def select(self, image, selector, stop=None):
        self.gate.wait(10)
        return np.ones((image.height, image.width), bool)


def test_waiting_selections_are_capped_and_bounded_by_the_deadline(flower):
    """Selections wait on the event loop, one at a time: past `max_queue` waiting a 429, past the deadline a 504;
    other routes answer meanwhile."""
    import asyncio

    import httpx

    from pipelines import CompositeEngine
    from server.api.app import create_app
    from server.api.live_server import live_server
    from server.settings import Settings

    app = create_app(Settings(api_keys=["k"], max_queue=1, request_timeout_s=2), CompositeEngine())
    segmenter = GatedSegmenter()
    app.state.selection._segmenter = segmenter
    body = {"main_image": flower, "box": [165, 82, 450, 365]}

    async def burst(url: str) -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=url, headers={"x-api-key": "k"}, timeout=30) as http:
            calls = [asyncio.create_task(http.post("/v1/seg-mask", json=body)) for _ in range(3)]
            await asyncio.sleep(0.5)
            start = asyncio.get_running_loop().time()
            assert (await http.get("/health/live")).status_code == 200
            other = asyncio.get_running_loop().time() - start
            return [r.status_code for r in await asyncio.gather(*calls)], other

    with live_server(app) as url:
        codes, other = asyncio.run(burst(url))
        segmenter.gate.set()
    assert sorted(codes) == [429, 504, 504] and other < 0.5


def test_a_broken_detector_set_fails_words_with_a_503_and_nothing_else(tmp_path, flower):
    from fastapi.testclient import TestClient

    from pipelines import CompositeEngine
    from pipelines.models.tiny import make_tiny
    from server.api.app import create_app
    from server.settings import Settings
    from tests.conftest import wait_ready

    pytest.importorskip("transformers")
    make_tiny(tmp_path, sets=("sam2", "owlv2"))
    (tmp_path / "owlv2" / "config.json").write_text("{broken")
    app = create_app(Settings(api_keys=["k"], weights_dir=tmp_path), CompositeEngine())
    with TestClient(app, headers={"x-api-key": "k"}) as client:
        wait_ready(client)
        words = client.post("/v1/seg-mask", json={"main_image": flower, "text": "a flower"})
        assert words.status_code == 503 and "selection by text is unavailable" in words.json()["error"]
        box = client.post("/v1/seg-mask", json={"main_image": flower, "box": [165, 82, 450, 365]})
        assert box.status_code == 200 and box.headers["x-segswap-segmenter"] == "sam2+owlv2"


def test_an_outside_point_far_from_the_object_selects_on_every_route(client):
    """As reported: a red disk with small white dots, an outside point near the far corner (past the crop GrabCut
    works on). It was a 500 on every selecting route; now the disk is selected, the far point ignored."""
    from PIL import ImageDraw

    scene = Image.new("RGB", (1000, 1000), (255, 255, 255))
    draw = ImageDraw.Draw(scene)
    draw.ellipse((100, 100, 700, 700), fill=(220, 30, 30))
    for x, y in ((300, 300), (400, 550), (550, 350)):
        draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(255, 255, 255))
    points = [[400, 400, 1], [950, 950, 0]]
    main = png_b64(scene)
    obj = b64(Image.new("RGB", (40, 40), (20, 60, 220)))
    mask = client.post("/v1/seg-mask", json={"main_image": main, "points": points})
    assert mask.status_code == 200, mask.text
    selected = np.asarray(Image.open(io.BytesIO(mask.content)).convert("L")) > 127
    assert selected[400, 400] and selected[250, 400] and not selected[850, 850] and not selected[950, 950]
    for route, body in (
        ("/v1/seg-swap", {"main_image": main, "object_image": obj, "points": points}),
        ("/v2/seg-swap", {"main_image": main, "object_image": obj, "points": points}),
    ):
        answer = client.post(route, json=body)
        assert answer.status_code == 200, (route, answer.text)
    edit = client.post(
        "/v1/images/edits",
        data={"prompt": "", "points": json.dumps(points)},
        files=[("image[]", ("scene.png", base64.b64decode(main), "image/png")),
               ("image[]", ("object.png", base64.b64decode(obj), "image/png"))],
    )  # fmt: skip
    assert edit.status_code == 200, edit.text
