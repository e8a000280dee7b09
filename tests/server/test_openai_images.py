"""POST /v1/images/edits driven by the official `openai` SDK, unchanged, against a live server."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pipelines import CompositeEngine
from server.api.app import create_app
from server.api.live_server import live_server
from server.settings import Settings

openai = pytest.importorskip("openai")
KEY = "openai-key-0123456789"
SIZE = (96, 64)


@pytest.fixture(scope="module")
def url():
    with live_server(create_app(Settings(api_keys=[KEY]), CompositeEngine())) as address:
        yield address


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openai")
    scene = Image.new("RGB", SIZE, (40, 120, 60))
    ImageDraw.Draw(scene).ellipse((32, 22, 58, 43), fill=(240, 220, 30))
    scene.save(folder / "scene.png")
    Image.new("RGB", (30, 30), (220, 30, 30)).save(folder / "object.png")
    mask = Image.new("RGBA", SIZE, (0, 0, 0, 255))  # OpenAI's convention: transparent = edit
    ImageDraw.Draw(mask).rectangle((30, 20, 60, 45), fill=(0, 0, 0, 0))
    mask.save(folder / "mask.png")
    white = Image.new("L", SIZE, 0)
    ImageDraw.Draw(white).rectangle((30, 20, 60, 45), fill=255)
    white.save(folder / "mask_white.png")
    return folder


def client(url: str, key: str = KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def images(folder) -> list:
    return [open(folder / "scene.png", "rb"), open(folder / "object.png", "rb")]  # noqa: SIM115 (the SDK reads them)


def decoded(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


@pytest.fixture(scope="module")
def diffusion_url(tiny_weights):
    """A server on the tiny SD1.5 set: unlike the composite engine's, its images depend on the seed."""
    settings = Settings(api_keys=[KEY], weights_dir=tiny_weights, model_set="sd15", engine="diffusion")
    with live_server(create_app(settings)) as address:
        yield address


def test_the_sdk_edits_n_images_with_seeds_in_a_row(diffusion_url, files):
    """Image i is, byte for byte, what /v1/seg-swap makes with seed 11 + i (and the two differ: the seed matters)."""
    import httpx

    answer = client(diffusion_url).images.edit(
        image=images(files),
        mask=open(files / "mask_white.png", "rb"),
        prompt="a red box",
        n=2,
        extra_body={"seed": 11, "growmask": 0, "steps": 10},
    )
    assert len(answer.data) == 2 and answer.output_format == "png" and answer.created > 0
    outputs = [base64.b64decode(item.b64_json) for item in answer.data]
    assert outputs[0] != outputs[1]
    for index, output in enumerate(outputs):
        direct = httpx.post(
            f"{diffusion_url}/v1/seg-swap",
            headers={"x-api-key": KEY},
            files={
                name: (files / f"{stem}.png").read_bytes()
                for name, stem in [("main_image", "scene"), ("object_image", "object"), ("mask_image", "mask_white")]
            },
            data={"seed": str(11 + index), "growmask": "0", "prompt": "a red box", "steps": "10"},
            timeout=60,
        )
        assert direct.status_code == 200 and direct.content == output, index
    image = np.asarray(Image.open(io.BytesIO(outputs[0])))
    assert image.shape[:2] == SIZE[::-1]
    outside = np.asarray(Image.open(files / "mask_white.png")) == 0
    assert np.array_equal(image[outside], np.asarray(Image.open(files / "scene.png"))[outside])


def test_a_wrong_key_is_a_401_in_openais_shape(url, files):
    with pytest.raises(openai.AuthenticationError) as raised:
        client(url, "wrong").images.edit(image=images(files), prompt="x")
    assert raised.value.status_code == 401
    assert raised.value.body["message"] == "invalid API key" and raised.value.body["type"] == "invalid_request_error"


def test_the_scene_alone_is_an_erase_on_the_composite_engine(url, files):
    """One image and a mask: an edit by the prompt, which the composite engine (no prompt read) runs as an erase."""
    answer = client(url).images.edit(
        image=open(files / "scene.png", "rb"),
        mask=open(files / "mask.png", "rb"),
        prompt="grass",
        extra_body={"growmask": 0},
    )
    out, scene = np.asarray(decoded(answer.data[0].b64_json)), np.asarray(Image.open(files / "scene.png"))
    edited = np.asarray(Image.open(files / "mask_white.png")) > 0
    assert np.array_equal(out[~edited], scene[~edited]) and not np.array_equal(out[edited], scene[edited])
    assert not (out[edited] == (240, 220, 30)).all(axis=-1).any()  # the yellow disc under the mask is gone
    with pytest.raises(openai.BadRequestError) as raised:
        client(url).images.edit(
            image=open(files / "scene.png", "rb"),
            mask=open(files / "mask.png", "rb"),
            prompt="x",
            extra_body={"mode": "object"},
        )
    assert "needs the object as a second image[]" in raised.value.body["message"]


@pytest.mark.parametrize(
    ("extra", "message", "param"),
    [
        ({"n": 5}, "'n' must be from 1 to 4", "n"),
        ({"size": "1024x1024"}, "'size' must be auto or the scene's own size, 96x64", "size"),
        ({"extra_body": {"growmask": 99}}, "'growmask'", "growmask"),
        ({"extra_body": {"stepz": 3}}, "unknown 'stepz'", "stepz"),
        ({"output_format": "gif"}, "'output_format' must be png, jpeg or webp", "output_format"),
        (
            {"output_format": "png", "extra_body": {"image_format": "webp"}},
            "'output_format' png and 'image_format' webp",
            "output_format",
        ),
        ({"mask": None}, "send a mask (transparent = the region to edit), or select the region", None),
    ],
)
def test_bad_values_are_400s_naming_the_field_in_message_and_param(url, files, extra, message, param):
    mask = {"mask": open(files / "mask.png", "rb")} if "mask" not in extra else {}  # noqa: SIM115
    extra = {name: value for name, value in extra.items() if name != "mask"}
    with pytest.raises(openai.BadRequestError) as raised:
        client(url).images.edit(image=images(files), prompt="x", **mask, **extra)
    assert message in raised.value.body["message"] and raised.value.body["param"] == param


def test_an_image_the_engine_refuses_is_named_as_openai_names_it(url, files, tmp_path):
    Image.new("RGBA", (30, 30), (220, 30, 30, 0)).save(tmp_path / "clear.png")
    with pytest.raises(openai.BadRequestError) as raised:
        scene, clear = open(files / "scene.png", "rb"), open(tmp_path / "clear.png", "rb")  # noqa: SIM115
        client(url).images.edit(image=[scene, clear], mask=open(files / "mask.png", "rb"), prompt="x")  # noqa: SIM115
    message = raised.value.body["message"]
    assert message.startswith("the second image[] (the object): the object image is fully transparent"), message
    assert raised.value.body["param"] == "image" and "object_image" not in message


def test_output_compression_takes_openais_whole_range_as_the_encoders_quality(url, files):
    def jpeg(compression: int) -> bytes:
        mask = open(files / "mask.png", "rb")  # noqa: SIM115
        edit = client(url).images.edit(
            image=images(files), mask=mask, prompt="x", output_format="jpeg", output_compression=compression
        )
        return base64.b64decode(edit.data[0].b64_json)

    assert len(jpeg(0)) < len(jpeg(10)) < len(jpeg(100))  # 0 is its own quality, not 10 in disguise
    with pytest.raises(openai.BadRequestError) as raised:
        jpeg(101)
    assert raised.value.body["message"] == "'output_compression' must be from 0 to 100 (got 101)"


def test_a_box_instead_of_a_mask_url_answers_and_jpeg(url, files):
    answer = client(url).images.edit(
        image=images(files),
        prompt="x",
        response_format="url",
        output_format="jpeg",
        output_compression=80,
        extra_body={"box": "30,20,60,45"},
    )
    assert answer.data[0].url.startswith("data:image/jpeg;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(answer.data[0].url.split(",", 1)[1]))).format == "JPEG"


def test_segswaps_image_format_alone_sets_the_format(url, files):
    answer = client(url).images.edit(
        image=images(files), mask=open(files / "mask.png", "rb"), prompt="x", extra_body={"image_format": "webp"}
    )
    assert answer.output_format == "webp" and decoded(answer.data[0].b64_json).format == "WEBP"


def test_a_failed_edit_gives_its_credits_back_and_a_short_balance_says_what_n_images_cost(
    tmp_path, files, capsys, monkeypatch
):
    from server.access.credits import open_ledger
    from server.cli.main import main
    from tests.server.engines import FailingEngine

    keys_file, ledger = tmp_path / "keys.toml", tmp_path / "credits.sqlite3"
    monkeypatch.setenv("SEGSWAP_CREDITS_DB", str(ledger))
    assert main(["keys", "--keys-file", str(keys_file), "add", "metered", "--credits", "2"]) == 0
    secret = capsys.readouterr().out.strip()
    settings = Settings(keys_file=keys_file, credits_db=ledger, jobs_dir=tmp_path / "jobs")
    engine = FailingEngine(succeed=1)

    def edit(n: int):
        return client(address, secret).images.edit(
            image=images(files), mask=open(files / "mask.png", "rb"), prompt="x", n=n
        )

    with live_server(create_app(settings, engine)) as address:
        with pytest.raises(openai.BadRequestError) as failed:
            edit(2)  # the first image is made, the second fails
        assert engine.runs == 2 and "could not use this object" in failed.value.body["message"]
        with pytest.raises(openai.APIStatusError) as short:
            edit(4)
    assert short.value.status_code == 406
    assert short.value.body["message"] == "insufficient credits: this key has 2, 4 images cost 4 (4 x 1 each)"
    credits = open_ledger(settings)
    try:
        assert credits.balance("metered") == 2
    finally:
        credits.close()
