"""What comes back: format, size, quality, base64, headers, determinism."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from pipelines.imageops import grow_mask, normalize_mask


@pytest.mark.parametrize(
    "fmt,media_type,pil_format",
    [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP")],
)
def test_output_format_and_size(client, body, scene, fmt, media_type, pil_format):
    response = client.post("/v1/seg-swap", json={**body, "image_format": fmt})
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    assert image.format == pil_format and image.size == scene.size


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_image_quality_changes_the_encoding(client, body, fmt):
    low = client.post("/v1/seg-swap", json={**body, "image_format": fmt, "image_quality": 10}).content
    high = client.post("/v1/seg-swap", json={**body, "image_format": fmt, "image_quality": 100}).content
    assert len(low) < len(high)


def test_base64_true_returns_json_with_the_same_image(client, body):
    raw = client.post("/v1/seg-swap", json={**body, "base64": False})
    wrapped = client.post("/v1/seg-swap", json={**body, "base64": True})
    assert raw.headers["content-type"] == "image/png"
    assert wrapped.headers["content-type"] == "application/json"
    payload = wrapped.json()
    assert base64.b64decode(payload["image"]) == raw.content
    assert payload["seed"] == 7 and payload["engine"] == "composite" and payload["image_format"] == "png"


def test_headers_of_the_hosted_api_and_ours(client, body):
    response = client.post("/v1/seg-swap", json=body, headers={"x-request-id": "client-chosen-1"})
    assert response.headers["x-request-id"] == "client-chosen-1"
    assert response.headers["x-seed-value"] == "7"
    assert float(response.headers["x-generation-time"]) >= 0
    assert response.headers["x-segswap-engine"] == "composite"


def test_request_id_is_generated_when_absent_or_unsafe(client, body):
    first = client.post("/v1/seg-swap", json=body).headers["x-request-id"]
    second = client.post("/v1/seg-swap", json=body, headers={"x-request-id": "bad id\twith spaces"}).headers[
        "x-request-id"
    ]
    assert len(first) == 32 and first != second and " " not in second


def test_seed_minus_one_picks_a_seed_and_reports_it(client, body):
    seeds = {client.post("/v1/seg-swap", json={**body, "seed": -1}).headers["x-seed-value"] for _ in range(3)}
    assert all(0 <= int(seed) < 2**32 for seed in seeds) and len(seeds) > 1


def test_same_request_gives_identical_bytes(client, body):
    assert client.post("/v1/seg-swap", json=body).content == client.post("/v1/seg-swap", json=body).content


def test_pixels_outside_the_grown_mask_are_identical_in_png(client, body, scene, mask):
    out = np.asarray(Image.open(io.BytesIO(client.post("/v1/seg-swap", json={**body, "growmask": 3}).content)))
    grown = grow_mask(normalize_mask(mask, scene.size), 3)
    assert np.array_equal(out[~grown], np.asarray(scene)[~grown])
    assert not np.array_equal(out[grown], np.asarray(scene)[grown])


def test_empty_mask_is_400(client, body, scene):
    from tests.conftest import b64

    response = client.post("/v1/seg-swap", json={**body, "mask_image": b64(Image.new("L", scene.size, 0))})
    assert response.status_code == 400 and "mask_image" in response.json()["error"]
