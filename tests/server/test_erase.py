"""mode=erase through the API on the composite engine: v1 (JSON and multipart), v2 and OpenAI edits answer with no
object, every pixel outside the grown mask identical, an object sent along ignored (a URL never fetched), and
the output's record names no object."""

import base64
import io
import time

import numpy as np
import pytest
from PIL import Image

from pipelines.imageops import grow_mask, normalize_mask
from server.inputs.metadata import read
from tests.conftest import png_bytes
from tests.server.conftest import KEY

GROWMASK = 3


@pytest.fixture()
def erase_body(body) -> dict:
    body = {name: value for name, value in body.items() if name != "object_image"}
    return {**body, "mode": "erase", "growmask": GROWMASK}


def image_of(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def assert_erased(data: bytes, scene: Image.Image, mask: Image.Image) -> None:
    """Every pixel outside the grown mask is the scene's own; inside, the old content is gone."""
    grown = grow_mask(normalize_mask(mask, scene.size), GROWMASK)
    out, before = np.asarray(image_of(data).convert("RGB")), np.asarray(scene)
    assert out.shape == before.shape
    assert np.array_equal(out[~grown], before[~grown])
    assert (out[grown] != before[grown]).any(axis=-1).mean() > 0.5


def test_v1_erase_with_no_object_answers_200_and_keeps_every_pixel_outside(client, erase_body, scene, mask):
    response = client.post("/v1/seg-swap", json=erase_body)
    assert response.status_code == 200, response.text
    assert response.headers["x-segswap-engine"] == "composite"
    assert_erased(response.content, scene, mask)
    record = read(image_of(response.content))
    assert set(record["inputs"]) == {"main_image", "mask_image"} and record["parameters"]["mode"] == "erase"
    assert client.post("/v1/seg-swap", json=erase_body).content == response.content  # same seed, same bytes


def test_an_object_sent_with_an_erase_is_ignored_and_not_fetched(client, erase_body, obj, file_server):
    plain = client.post("/v1/seg-swap", json=erase_body).content
    file_server.files["/erase-object.png"] = png_bytes(obj)
    with_url = client.post("/v1/seg-swap", json={**erase_body, "object_image": f"{file_server.url}/erase-object.png"})
    assert with_url.status_code == 200 and with_url.content == plain
    assert "/erase-object.png" not in file_server.requests
    files = {name: base64.b64decode(erase_body[name]) for name in ("main_image", "mask_image")}
    files["object_image"] = png_bytes(obj)
    form = {name: str(erase_body[name]) for name in ("mode", "growmask", "seed", "steps")}
    uploaded = client.post("/v1/seg-swap", files=files, data=form)
    assert uploaded.status_code == 200 and uploaded.content == plain


@pytest.mark.parametrize("mode", [None, "object", "pattern", "auto"])
def test_a_missing_object_in_any_other_mode_is_a_400_naming_it(client, erase_body, mode):
    body = {**erase_body, "mode": mode} if mode else {k: v for k, v in erase_body.items() if k != "mode"}
    response = client.post("/v1/seg-swap", json=body)
    assert response.status_code == 400
    assert response.json() == {"error": "field 'object_image' is required unless mode is erase"}


def test_v2_erase_completes_with_no_object(client, erase_body, scene, mask):
    submitted = client.post("/v2/seg-swap", json=erase_body)
    assert submitted.status_code == 200, submitted.text
    job = submitted.json()["request_id"]
    for _ in range(400):
        status = client.get(f"/v2/requests/{job}/status").json()["status"]
        if status != "QUEUED" and status != "PROCESSING":
            break
        time.sleep(0.025)
    assert status == "COMPLETED"
    output = client.get(f"/v2/requests/{job}/output")
    assert_erased(output.content, scene, mask)
    assert output.content == client.post("/v1/seg-swap", json=erase_body).content


def openai_form(scene: Image.Image, mask: Image.Image, *images: Image.Image) -> list:
    transparent_to_edit = Image.new("RGBA", mask.size, (0, 0, 0, 255))
    transparent_to_edit.putalpha(Image.eval(mask.convert("L"), lambda value: 255 - value))
    files = [("image[]", (f"{n}.png", png_bytes(image), "image/png")) for n, image in enumerate((scene, *images))]
    return [*files, ("mask", ("mask.png", png_bytes(transparent_to_edit), "image/png"))]


def test_openai_one_image_and_a_mask_erase_on_the_composite_engine(client, erase_body, scene, mask):
    form = {"prompt": "a stone wall", "seed": "7", "growmask": str(GROWMASK), "steps": "10"}
    headers = {"authorization": f"Bearer {KEY}"}
    answer = client.post("/v1/images/edits", files=openai_form(scene, mask), data=form, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-segswap-engine"] == "composite"
    data = base64.b64decode(answer.json()["data"][0]["b64_json"])
    assert_erased(data, scene, mask)
    assert read(image_of(data))["parameters"]["mode"] == "erase"
    direct = client.post("/v1/seg-swap", json={**erase_body, "prompt": "a stone wall"}).content
    assert np.array_equal(np.asarray(image_of(data)), np.asarray(image_of(direct)))


def test_openai_one_image_with_a_mode_that_needs_an_object_says_so(client, scene, mask):
    headers = {"authorization": f"Bearer {KEY}"}
    answer = client.post(
        "/v1/images/edits", files=openai_form(scene, mask), data={"prompt": "x", "mode": "object"}, headers=headers
    )
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]
    assert "'mode' object needs the object as a second image[]" in message and "erase" in message
    three = client.post("/v1/images/edits", files=openai_form(scene, mask, scene, scene), data={"prompt": "x"})
    assert three.status_code == 400 and "the scene alone" in three.json()["error"]["message"]


def test_an_empty_object_field_is_no_object(client, erase_body):
    """A form's file input left empty arrives as an empty value: ignored by an erase, missing in any other mode."""
    plain = client.post("/v1/seg-swap", json=erase_body).content
    assert client.post("/v1/seg-swap", json={**erase_body, "object_image": ""}).content == plain
    form = {name: str(erase_body[name]) for name in ("mode", "growmask", "seed", "steps")}
    files = {name: base64.b64decode(erase_body[name]) for name in ("main_image", "mask_image")}
    assert client.post("/v1/seg-swap", files=files, data={**form, "object_image": ""}).content == plain
    swap = client.post("/v1/seg-swap", json={**erase_body, "mode": "object", "object_image": ""})
    assert swap.status_code == 400
    assert swap.json() == {"error": "field 'object_image' is required unless mode is erase"}


def test_erasing_the_whole_image_is_a_400(client, erase_body, scene):
    full = png_bytes(Image.new("L", scene.size, 255))
    response = client.post("/v1/seg-swap", json={**erase_body, "mask_image": base64.b64encode(full).decode()})
    assert response.status_code == 400
    assert response.json()["error"].startswith("field 'mask_image': covers the whole image (after growmask)")
    assert client.post("/v1/seg-swap", json=erase_body).status_code == 200  # and the server goes on


def test_the_warm_up_compiles_the_fill():
    """The first erase a client sends must not pay for compiling the fill's loops (seconds): the warm-up, in a
    fresh process, runs every one of them."""
    import subprocess
    import sys

    script = (
        "from pipelines.engines.composite import CompositeEngine\n"
        "from pipelines.placement import patchmatch as pm\n"
        "from server.serving.workers import warm_up\n"
        "warm_up(CompositeEngine())\n"
        "kernels = (pm.search, pm.vote, pm.copy_centres, pm.nearby_nnf, pm.upsample_nnf)\n"
        "print(sorted(k.py_func.__name__ for k in kernels if not k.signatures))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"  # none left to compile on a client's request
