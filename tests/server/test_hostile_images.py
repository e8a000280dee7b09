"""Hostile and unusual images: bombs, wrong formats, odd modes, animations, oversize bodies."""

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from server.inputs.decode import decode_image
from tests.conftest import b64, png_bytes


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_decompression_bomb_is_413_before_decoding(client, body):
    response = client.post("/v1/seg-swap", json={**body, "main_image": encoded(png_claiming(50_000, 50_000))})
    assert response.status_code == 413 and "more than 1000000 pixels" in response.json()["error"]


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "ICO"])
def test_formats_outside_the_allow_list_are_400(client, body, scene, fmt):
    response = client.post("/v1/seg-swap", json={**body, "object_image": b64(scene.resize((32, 32)), fmt)})
    assert response.status_code == 400 and "use PNG, JPEG or WEBP" in response.json()["error"]


def test_png_bytes_named_like_a_jpeg_are_judged_by_content(client, body, scene):
    response = client.post("/v1/seg-swap", json={**body, "main_image": "data:image/jpeg;base64," + b64(scene)})
    assert response.status_code == 200


@pytest.mark.parametrize("cut", [8, 40, 100, -10])
def test_truncated_and_corrupt_files_are_400(client, body, scene, cut):
    data = bytearray(png_bytes(scene))
    data = data[:cut] if cut > 0 else data[:cut] + b"garbage!!!"
    response = client.post("/v1/seg-swap", json={**body, "main_image": encoded(bytes(data))})
    assert response.status_code == 400 and "'main_image'" in response.json()["error"]


def test_cmyk_jpeg_becomes_rgb(scene):
    buffer = io.BytesIO()
    scene.convert("CMYK").save(buffer, "JPEG")
    assert decode_image(buffer.getvalue(), "main_image", 10**7).mode == "RGB"


def test_palette_with_transparency_keeps_its_alpha(obj):
    palette = obj.convert("RGBA").quantize(colors=8)
    palette.info["transparency"] = 0
    decoded = decode_image(png_bytes(palette), "object_image", 10**7)
    assert decoded.mode == "RGBA" and decoded.getchannel("A").getextrema()[0] == 0


def test_16_bit_grayscale_is_scaled_to_8_bits():
    deep = Image.fromarray(np.array([[0, 65535]], dtype=np.uint16))
    decoded = decode_image(png_bytes(deep), "mask_image", 10**7)
    assert decoded.mode == "L" and [decoded.getpixel((0, 0)), decoded.getpixel((1, 0))] == [0, 255]


def test_animated_image_uses_its_first_frame(client, body, scene):
    frames = [scene, Image.new("RGB", scene.size, (255, 0, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    decoded = decode_image(buffer.getvalue(), "main_image", 10**7)
    assert np.array_equal(np.asarray(decoded), np.asarray(scene))
    assert client.post("/v1/seg-swap", json={**body, "main_image": encoded(buffer.getvalue())}).status_code == 200


def test_oversize_multipart_body_is_413(client, scene, mask):
    files = {
        "main_image": ("a.png", b"\x00" * 2_100_000, "image/png"),
        "mask_image": ("m.png", png_bytes(mask), "image/png"),
    }
    response = client.post("/v1/seg-swap", files=files, data={"object_image": b64(scene)})
    assert response.status_code == 413


@pytest.mark.parametrize("value", ["iVBORw0KGgo=%%%", "iVBORw0KGgoé", "iVBO Rw0K===x"])
def test_invalid_base64_is_400(client, body, value):
    response = client.post("/v1/seg-swap", json={**body, "object_image": value})
    assert response.status_code == 400 and "not a URL and not valid base64" in response.json()["error"]


def test_line_wrapped_or_unpadded_base64_is_read(client, body):
    """Line breaks, Unicode spaces, missing or excess padding: what the standard library's lenient reading took
    before the fast decoder still reads (it falls back to that reading)."""
    wrapped = "\n".join(body["object_image"][i : i + 76] for i in range(0, len(body["object_image"]), 76))
    unicode_spaced = body["object_image"][:40] + "\u2028\u00a0" + body["object_image"][40:]
    for value in (wrapped, body["object_image"].rstrip("="), unicode_spaced, body["object_image"] + "="):
        assert client.post("/v1/seg-swap", json={**body, "object_image": value}).status_code == 200
