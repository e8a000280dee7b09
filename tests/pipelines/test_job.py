"""build_job: one way from request values to a SwapJob, for v1, v2 and the CLI."""

from dataclasses import fields

from PIL import Image

from pipelines import IMAGE_FIELDS, SwapJob, build_job


def images() -> dict[str, Image.Image]:
    return {
        "main_image": Image.new("RGBA", (8, 6), (1, 2, 3, 255)),
        "mask_image": Image.new("L", (8, 6), 255),
        "object_image": Image.new("RGB", (4, 4)),
    }


def test_every_job_field_in_the_values_is_taken_and_the_rest_ignored():
    values = {
        "prompt": "a chair",
        "steps": 12,
        "seed": 7,
        "growmask": 3,
        "fashion_strength": 0.25,
        "subject_strength": 0.5,
        "horizontal_repeat": 2,
        "vertical_repeat": 3,
        "negative_prompt": "blur",
        "guidance_scale": 4.0,
        "image_format": "webp",
        "base64": True,
        "_webhook_secret": "x",
    }
    job = build_job(values, images())
    for name, value in values.items():
        if name in {f.name for f in fields(SwapJob)}:
            assert getattr(job, name) == value, name
    assert job.main_image.mode == "RGB" and job.mask_image.mode == "L"


def test_a_random_seed_is_resolved_and_a_given_one_kept():
    assert 0 <= build_job({"seed": -1}, images()).seed <= 2**32 - 1
    assert build_job({"seed": 5}, images()).seed == 5


def test_missing_values_take_the_job_defaults():
    job = build_job({}, images())
    defaults = SwapJob(**{name: image for name, image in images().items()})
    for f in fields(SwapJob):
        if f.name not in IMAGE_FIELDS:
            assert getattr(job, f.name) == getattr(defaults, f.name), f.name
