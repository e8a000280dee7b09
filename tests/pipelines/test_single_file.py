"""Single-file base checkpoints (`base.safetensors`, original key format) load offline and exactly.

The tiny diffusers-format sets are exported to the original single-file format, their
base/ weights deleted, and loaded back through diffusers' own converters: the swap
comes out byte-identical to the diffusers-format set's, which only an exact round trip
of every weight gives.
"""

import json
import shutil

import pytest

pytest.importorskip("diffusers")

import torch  # noqa: E402
from diffusers.loaders.single_file_utils import (  # noqa: E402
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModelWithProjection  # noqa: E402

from pipelines import SwapJob, WeightsError  # noqa: E402
from pipelines.engines.diffusion.engine import DiffusionEngine  # noqa: E402
from pipelines.models.model_sets import ModelSet, find_model_set  # noqa: E402
from pipelines.models.tiny import make_tiny, to_single_file  # noqa: E402
from tests.pipelines.jobs import diffusion_job  # noqa: E402

ARCHS = ["sd15", "sdxl"]


@pytest.fixture(scope="module")
def single_file_sets(tiny_weights, tmp_path_factory):
    """Copies of the tiny sets turned into base.safetensors + config-only base/."""
    out = tmp_path_factory.mktemp("single_file")
    for arch in ARCHS:
        shutil.copytree(tiny_weights / arch, out / arch)
        to_single_file(out / arch)
    return out


def job(**overrides) -> SwapJob:
    return diffusion_job(**overrides)


def assert_same_tensors(converted: dict, original: dict) -> None:
    assert set(converted) == set(original)
    for key, value in original.items():
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize("arch", ARCHS)
def test_export_is_the_inverse_of_diffusers_converters(arch, tiny_weights, single_file_sets):
    checkpoint = load_file(single_file_sets / arch / "base.safetensors")
    base = tiny_weights / arch / "base"
    text_root = "cond_stage_model" if arch == "sd15" else "conditioner"
    assert {key.split(".")[0] for key in checkpoint} == {"model", "first_stage_model", text_root}
    assert checkpoint["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    assert checkpoint["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv, as in real files

    unet_config = json.loads((base / "unet" / "config.json").read_text())
    vae_config = json.loads((base / "vae" / "config.json").read_text())
    assert_same_tensors(
        convert_ldm_unet_checkpoint(checkpoint, unet_config),
        load_file(base / "unet/diffusion_pytorch_model.safetensors"),
    )
    assert_same_tensors(
        convert_ldm_vae_checkpoint(checkpoint, vae_config), load_file(base / "vae/diffusion_pytorch_model.safetensors")
    )
    text = convert_ldm_clip_checkpoint(checkpoint)
    text.pop("text_model.embeddings.position_ids")  # a buffer real files carry; not a weight
    assert_same_tensors(
        {key.removeprefix("text_model."): value for key, value in text.items()},
        load_file(base / "text_encoder/model.safetensors"),
    )
    if arch == "sdxl":
        assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in checkpoint
        model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(base / "text_encoder_2"))
        assert_same_tensors(
            convert_open_clip_checkpoint(model, checkpoint, prefix="conditioner.embedders.1.model."),
            load_file(base / "text_encoder_2/model.safetensors"),
        )


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_plus_config_only_base_is_a_complete_set(arch, single_file_sets):
    folder = single_file_sets / arch
    assert not [p for p in (folder / "base").rglob("*") if p.suffix in (".safetensors", ".bin")]
    model_set = ModelSet(arch, folder)
    assert model_set.checkpoint == folder / "base.safetensors"
    assert model_set.missing() == []
    assert find_model_set(single_file_sets, arch) == model_set
    assert ModelSet(arch, single_file_sets.parent / "nowhere").checkpoint is None


def test_config_only_base_without_checkpoint_is_incomplete(single_file_sets, tmp_path):
    shutil.copytree(single_file_sets / "sd15", tmp_path / "sd15")
    (tmp_path / "sd15" / "base.safetensors").unlink()
    assert "base/unet/diffusion_pytorch_model.safetensors" in ModelSet("sd15", tmp_path / "sd15").missing()
    (tmp_path / "sd15" / "base.safetensors").write_bytes(b"")  # present again: now configs are what count
    (tmp_path / "sd15" / "base" / "unet" / "config.json").unlink()
    assert ModelSet("sd15", tmp_path / "sd15").missing() == ["base/unet/config.json"]


@pytest.mark.parametrize("arch", ARCHS)
def test_single_file_set_swaps_to_the_same_bytes(arch, tiny_weights, single_file_sets):
    single = DiffusionEngine(ModelSet(arch, single_file_sets / arch))
    diffusers_format = DiffusionEngine(ModelSet(arch, tiny_weights / arch))
    assert single.swap(job()).tobytes() == diffusers_format.swap(job()).tobytes()


@pytest.fixture()
def broken_set(single_file_sets, tmp_path):
    """A copy of the SD1.5 single-file set whose checkpoint each test spoils."""
    folder = tmp_path / "sd15"
    shutil.copytree(single_file_sets / "sd15", folder)
    return folder


@pytest.mark.parametrize("keep", [0, 7, 0.5], ids=["empty", "header-cut", "half"])
def test_corrupt_or_truncated_checkpoint_is_a_weights_error(broken_set, keep):
    checkpoint = broken_set / "base.safetensors"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(WeightsError, match=r"base\.safetensors is not a readable \.safetensors file"):
        DiffusionEngine(ModelSet("sd15", broken_set))


def spoil(folder, change) -> None:
    checkpoint = folder / "base.safetensors"
    save_file(change(load_file(checkpoint)), checkpoint)


def test_checkpoint_missing_weights_names_one(broken_set):
    spoil(broken_set, lambda sd: {k: v for k, v in sd.items() if ".output_blocks.3." not in k})
    with pytest.raises(WeightsError, match=r"lacks \d+ weight\(s\).*model\.diffusion_model\.output_blocks\.3\."):
        DiffusionEngine(ModelSet("sd15", broken_set))


def test_non_inpainting_checkpoint_is_a_weights_error(broken_set):
    key = "model.diffusion_model.input_blocks.0.0.weight"
    spoil(broken_set, lambda sd: {**sd, key: sd[key][:, :4].contiguous()})
    with pytest.raises(WeightsError, match="not an inpainting checkpoint: its UNet takes 4 input channels"):
        DiffusionEngine(ModelSet("sd15", broken_set))


def test_checkpoint_of_the_other_arch_is_a_weights_error(broken_set, single_file_sets):
    shutil.copy(single_file_sets / "sdxl" / "base.safetensors", broken_set / "base.safetensors")
    with pytest.raises(WeightsError, match="not an SD1.5 checkpoint"):
        DiffusionEngine(ModelSet("sd15", broken_set))


def test_make_tiny_single_file_layout(tmp_path):
    (folder,) = make_tiny(tmp_path, sets=("sd15",), single_file=True)
    assert (folder / "base.safetensors").is_file()
    assert not list((folder / "base").rglob("*.safetensors"))
    assert ModelSet("sd15", folder).missing() == []
