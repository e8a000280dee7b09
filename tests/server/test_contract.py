"""Every contract field at its bounds and one past them; types; unknown fields; content types."""

import pytest

BOUNDS = {
    "steps": (10, 100),
    "growmask": (0, 20),
    "fashion_strength": (0, 1),
    "subject_strength": (0, 1),
    "horizontal_repeat": (1, 10),
    "vertical_repeat": (1, 10),
    "image_quality": (10, 100),
    "seed": (-1, 2**32 - 1),
    "guidance_scale": (0, 30),
}


@pytest.mark.parametrize("field,value", [(f, v) for f, bounds in BOUNDS.items() for v in bounds])
def test_every_bound_is_accepted(client, body, field, value):
    response = client.post("/v1/seg-swap", json={**body, field: value})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "field,value",
    [(f, lo - (0.01 if isinstance(lo, float) or f.endswith("strength") else 1)) for f, (lo, _) in BOUNDS.items()]
    + [(f, hi + (0.01 if f.endswith("strength") else 1)) for f, (_, hi) in BOUNDS.items()],
)
def test_one_past_a_bound_is_a_400_naming_the_field(client, body, field, value):
    response = client.post("/v1/seg-swap", json={**body, field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert f"'{field}'" in error and ("greater than" in error or "less than" in error)


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", "30"),
        ("steps", 30.5),
        ("steps", True),
        ("seed", "x"),
        ("base64", "yes"),
        ("prompt", 5),
        ("fashion_strength", "high"),
        ("image_format", "gif"),
        ("image_format", "PNG"),
        ("main_image", 12),
    ],
)
def test_wrong_types_and_values_are_400_naming_the_field(client, body, field, value):
    response = client.post("/v1/seg-swap", json={**body, field: value})
    assert response.status_code == 400
    assert f"'{field}'" in response.json()["error"]


@pytest.mark.parametrize("field", ["main_image", "mask_image", "object_image"])
def test_missing_image_field_is_400(client, body, field):
    del body[field]
    response = client.post("/v1/seg-swap", json=body)
    assert response.status_code == 400 and response.json()["error"].startswith(f"field '{field}' is required")


def test_unknown_field_is_400_naming_it(client, body):
    response = client.post("/v1/seg-swap", json={**body, "stepz": 30})
    assert response.status_code == 400 and response.json()["error"] == "unknown field 'stepz'"


def test_defaults_apply_when_fields_are_left_out(client, body):
    body = {k: body[k] for k in ("main_image", "mask_image", "object_image")}
    response = client.post("/v1/seg-swap", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-seed-value"] == "42"


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml", ""])
def test_other_content_types_are_406(client, content_type):
    response = client.post("/v1/seg-swap", content=b"steps=30", headers={"content-type": content_type})
    assert response.status_code == 406 and "application/json" in response.json()["error"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(client, raw):
    response = client.post("/v1/seg-swap", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]


@pytest.mark.parametrize("route", ["/v1/seg-swap", "/v2/seg-swap", "/v1/seg-mask"])
@pytest.mark.parametrize("field,value", [("steps", "9" * 5000), ("box", f"[1, 2, 3, -{'9' * 5000}]")])
def test_a_number_past_pythons_digit_limit_is_a_400_naming_the_field(client, route, field, value):
    raw = f'{{"{field}": {value}}}'
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == f"field '{field}': a number of more than 4300 digits is too long to read"


@pytest.mark.parametrize("route", ["/v1/seg-swap", "/v2/seg-swap", "/v1/seg-mask"])
def test_a_field_given_twice_in_json_is_a_400_naming_it_not_the_last_one_silently(client, route):
    raw = '{"seed": 1, "steps": 20, "seed": 2}'
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "'seed' is given twice in one JSON object; send it once"


def test_oversize_body_is_413(client, body):
    response = client.post("/v1/seg-swap", json={**body, "prompt": "x" * 2_100_000})
    assert response.status_code == 413


def test_unknown_route_is_json_404(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_openapi_documents_fields_ranges_and_both_body_types(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/v1/seg-swap"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/json", "multipart/form-data"}
    props = content["application/json"]["schema"]["properties"]
    assert props["steps"]["minimum"] == 10 and props["steps"]["maximum"] == 100 and props["steps"]["default"] == 30
    assert props["growmask"]["maximum"] == 20 and props["image_format"]["enum"] == ["png", "jpeg", "webp"]
    assert "negative_prompt" in props and "guidance_scale" in props
    assert {"image/png", "image/jpeg", "image/webp", "application/json"} <= set(
        operation["responses"]["200"]["content"]
    )
    assert {"400", "401", "406", "413"} <= set(operation["responses"])
    assert "x-seed-value" in operation["responses"]["200"]["headers"]


def test_every_contract_field_reaches_the_engine_or_the_encoder():
    """A field added to the contract but not to SwapJob would be dropped silently by build_job (v1, v2, CLI)."""
    from dataclasses import fields

    from pipelines import IMAGE_FIELDS, SwapJob
    from server.contract import AsyncSwapRequest, Selection

    output_only = {"image_format", "image_quality", "base64", "webhook_url"}
    job_fields = {f.name for f in fields(SwapJob)}
    selectors = set(Selection.model_fields)  # they become the mask before the job is built
    routing = {"model_set", "priority"}  # pick the queue (the engine) the job goes to, and its place in it
    for name in AsyncSwapRequest.model_fields:
        assert name in job_fields | output_only | selectors | routing or name in IMAGE_FIELDS, name
