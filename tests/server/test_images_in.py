"""The three image input forms (URL, raw base64, data URI), multipart uploads, and unreadable images."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import b64, png_bytes


def decoded(response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_url_data_uri_and_raw_base64_give_the_same_result(client, body, file_server, scene, mask, obj):
    file_server.files["/scene.png"] = png_bytes(scene)
    file_server.files["/obj.png"] = png_bytes(obj)
    mixed = {
        **body,
        "main_image": f"{file_server.url}/scene.png",
        "mask_image": "data:image/png;base64," + b64(mask),
        "object_image": f"{file_server.url}/obj.png",
    }
    from_mixed = decoded(client.post("/v1/seg-swap", json=mixed))
    from_base64 = decoded(client.post("/v1/seg-swap", json=body))
    assert from_mixed.tobytes() == from_base64.tobytes()
    assert "/scene.png" in file_server.requests and "/obj.png" in file_server.requests


def test_multipart_with_uploaded_files_and_text_fields(client, body, scene, mask, obj):
    files = {
        "main_image": ("scene.png", png_bytes(scene), "image/png"),
        "mask_image": ("mask.png", png_bytes(mask), "image/png"),
    }
    data = {"object_image": b64(obj), "steps": "10", "seed": "7", "base64": "false"}
    from_form = decoded(client.post("/v1/seg-swap", files=files, data=data))
    assert from_form.tobytes() == decoded(client.post("/v1/seg-swap", json=body)).tobytes()


def test_multipart_values_are_validated_like_json(client, scene, mask, obj):
    files = {
        name: (name, png_bytes(img), "image/png")
        for name, img in [("main_image", scene), ("mask_image", mask), ("object_image", obj)]
    }
    response = client.post("/v1/seg-swap", files=files, data={"growmask": "21"})
    assert response.status_code == 400 and "'growmask'" in response.json()["error"]


def test_url_that_answers_404_is_a_400_naming_the_field(client, body, file_server):
    response = client.post("/v1/seg-swap", json={**body, "object_image": f"{file_server.url}/missing.png"})
    assert response.status_code == 400
    assert "'object_image'" in response.json()["error"] and "404" in response.json()["error"]


@pytest.mark.parametrize(
    "value", ["not base64 at all!", "data:image/png;base64,@@@", "aGVsbG8gd29ybGQ=", "ftp://example.com/a.png"]
)
def test_undecodable_images_are_400_naming_the_field(client, body, value):
    response = client.post("/v1/seg-swap", json={**body, "mask_image": value})
    assert response.status_code == 400 and "'mask_image'" in response.json()["error"]


def test_truncated_png_is_400(client, body, scene):
    truncated = base64.b64encode(png_bytes(scene)[:200]).decode()
    response = client.post("/v1/seg-swap", json={**body, "main_image": truncated})
    assert response.status_code == 400 and "'main_image'" in response.json()["error"]


def test_gif_is_refused_by_content(client, body, scene):
    response = client.post("/v1/seg-swap", json={**body, "main_image": b64(scene, "GIF")})
    assert response.status_code == 400 and "GIF" in response.json()["error"]


def test_image_above_the_pixel_limit_is_413_before_decoding(client, body):
    huge = Image.new("L", (1001, 1000))
    response = client.post("/v1/seg-swap", json={**body, "main_image": b64(huge)})
    assert response.status_code == 413 and "'main_image'" in response.json()["error"]


def test_jpeg_and_webp_inputs_are_accepted(client, body, scene):
    for fmt in ("JPEG", "WEBP"):
        assert decoded(client.post("/v1/seg-swap", json={**body, "main_image": b64(scene, fmt)})).size == scene.size


def test_exif_orientation_is_applied(client, body, scene):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    scene.save(buffer, "JPEG", exif=exif)
    out = decoded(
        client.post("/v1/seg-swap", json={**body, "main_image": base64.b64encode(buffer.getvalue()).decode()})
    )
    assert out.size == (scene.height, scene.width)


def test_server_keeps_serving_after_bad_requests(client, body):
    for _ in range(3):
        client.post("/v1/seg-swap", json={**body, "main_image": "garbage"})
    assert client.post("/v1/seg-swap", json=body).status_code == 200
    assert np.asarray(decoded(client.post("/v1/seg-swap", json=body))).shape[:2] == (64, 96)


CLEAR = Image.new("RGBA", (20, 30), (200, 30, 40, 0))  # colour everywhere, alpha 0 everywhere: nothing shows
TRANSPARENT = "field 'object_image': the object image is fully transparent"


FAINT = Image.new("RGBA", (20, 30), (200, 30, 40, 8))  # alpha 8: the cut-out keeps nothing of it either


@pytest.mark.parametrize("mode", ["object", "pattern", "auto"])
@pytest.mark.parametrize("clear", [CLEAR, FAINT], ids=["alpha-0", "alpha-8"])
def test_a_fully_transparent_object_is_a_400_on_v1_and_v2_not_a_silent_erase(client, body, mode, clear):
    for route in ("/v1/seg-swap", "/v2/seg-swap"):  # v2 refuses it at submit, not as a failed job later
        response = client.post(route, json={**body, "object_image": b64(clear), "mode": mode})
        assert response.status_code == 400, (route, response.text)
        assert response.json()["error"].startswith(TRANSPARENT)
    erased = client.post("/v1/seg-swap", json={**body, "object_image": b64(CLEAR), "mode": "erase"})
    assert erased.status_code == 200  # an erase takes no object: the one sent is ignored


def test_a_fully_transparent_object_is_a_400_on_openai_edits(client, scene, mask):
    files = [
        ("image[]", ("scene.png", png_bytes(scene), "image/png")),
        ("image[]", ("object.png", png_bytes(CLEAR), "image/png")),
        ("mask", ("mask.png", png_bytes(mask.convert("RGB")), "image/png")),
    ]
    response = client.post("/v1/images/edits", files=files, data={"prompt": "a table"})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("the second image[] (the object): the object image is")


def test_a_multipart_body_cut_short_says_so_not_that_a_field_is_missing(client, scene, mask):
    files = {"main_image": ("scene.png", png_bytes(scene)), "mask_image": ("mask.png", png_bytes(mask))}
    whole = client.build_request("POST", "/v1/seg-swap", files=files)
    raw = whole.read()
    for cut in (len(raw) // 2, len(raw) - 10):  # inside the first part; inside the closing boundary
        response = client.post(
            "/v1/seg-swap", content=raw[:cut], headers={"content-type": whole.headers["content-type"]}
        )
        assert response.status_code == 400
        assert response.json()["error"].startswith("the multipart body is incomplete")


@pytest.mark.parametrize(
    "route,name,message",
    [
        ("/v1/seg-swap", "image", "unknown field 'image' (uploaded files go in the image fields: main_image, "),
        ("/v1/seg-mask", "object_image", "unknown field 'object_image' (uploaded files go in the image fields: "),
        ("/v1/seg-swap", "prompt", "field 'prompt': only the image fields (main_image, mask_image, object_image) "),
    ],
)
def test_an_uploaded_file_in_a_field_that_takes_none_is_named_with_the_image_fields(
    client, scene, route, name, message
):
    files = {"main_image": ("scene.png", png_bytes(scene)), name: ("x.png", png_bytes(scene))}
    response = client.post(route, files=files)
    assert response.status_code == 400 and response.json()["error"].startswith(message)
