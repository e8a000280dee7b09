"""The tiny model sets load through plain diffusers exactly as the real downloads do.

Run from the repository root: `python -m pytest tests/pipelines/test_tiny_models.py`.
"""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; never reach for the hub

import numpy as np
import pytest
import torch
from diffusers import (
    AutoPipelineForInpainting,
    StableDiffusionInpaintPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTokenizer

from pipelines.models.model_sets import ModelSet
from pipelines.models.tiny import make_tiny

BASE_FILES = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]
SDXL_EXTRA_FILES = [
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
]
ENCODER_FILES = ["models/image_encoder/config.json", "models/image_encoder/model.safetensors"]

EXPECTED_FILES = {
    "sd15": sorted(
        [f"base/{f}" for f in BASE_FILES]
        + [f"ip_adapter/{f}" for f in ENCODER_FILES]
        + ["ip_adapter/models/ip-adapter_sd15.safetensors", "ip_adapter/models/ip-adapter-plus_sd15.safetensors"]
    ),
    "sdxl": sorted(
        [f"base/{f}" for f in BASE_FILES + SDXL_EXTRA_FILES]
        + [f"ip_adapter/{f}" for f in ENCODER_FILES]
        + [
            "ip_adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
            "ip_adapter/sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
        ]
    ),
}
FLUX2_FILES = sorted(
    f"base/{f}"
    for f in [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/generation_config.json",
        "text_encoder/model.safetensors",
        "tokenizer/chat_template.jinja",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ]
)
EXPECTED_FILES["flux2-klein"] = EXPECTED_FILES["flux2-klein-base"] = FLUX2_FILES
EXPECTED_FILES["sam2"] = ["config.json", "model.safetensors", "preprocessor_config.json"]
EXPECTED_FILES["owlv2"] = sorted(
    ["config.json", "model.safetensors", "preprocessor_config.json", "merges.txt", "vocab.json"]
    + ["special_tokens_map.json", "tokenizer_config.json"]
)
EXPECTED_FILES["sdxl-lcm"] = EXPECTED_FILES["sd15-lcm"] = ["pytorch_lora_weights.safetensors"]
PIPELINE_CLASS = {"sd15": StableDiffusionInpaintPipeline, "sdxl": StableDiffusionXLInpaintPipeline}
# InstantStyle's style block for each arch, as a per-block scale.
STYLE_SCALE = {
    "sd15": {"up": {"block_1": [0.0, 1.0, 0.0]}},
    "sdxl": {"up": {"block_0": [0.0, 1.0, 0.0]}},
}
STYLE_BLOCK = {"sd15": "up_blocks.1.attentions.1", "sdxl": "up_blocks.0.attentions.1"}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    sets = make_tiny(root)
    names = ("flux2-klein", "flux2-klein-base", "owlv2", "sam2", "sd15", "sd15-lcm", "sdxl", "sdxl-lcm")
    assert sorted(sets) == [root / name for name in names]
    return root


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _checkpoint(tiny_root, arch, variant):
    path = ModelSet(arch, tiny_root / arch, variant).adapter_file
    with safe_open(path, framework="pt") as f:
        return {key: f.get_tensor(key) for key in f.keys()}


def _inputs():
    image = Image.new("RGB", (64, 64), (150, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    reference = Image.new("RGB", (40, 56), (20, 20, 200))
    return image, mask, reference


@pytest.mark.parametrize("arch", list(EXPECTED_FILES))
def test_layout_is_exactly_the_real_one(tiny_root, arch):
    assert _files(tiny_root / arch) == EXPECTED_FILES[arch]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_the_lcm_lora_is_in_the_released_key_format(tiny_root, arch):
    """kohya-style names over diffusers' module names, lora_down / lora_up / alpha per layer, as the released
    LCM-LoRA files; every name is a layer of the set's UNet."""
    with safe_open(tiny_root / f"{arch}-lcm" / "pytorch_lora_weights.safetensors", framework="pt") as f:
        keys = list(f.keys())
    layers = {key.rsplit(".", 2)[0] if ".lora_" in key else key.rsplit(".", 1)[0] for key in keys}
    assert all(layer.startswith("lora_unet_") for layer in layers) and len(layers) > 20
    assert set(keys) == {
        f"{layer}.{part}" for layer in layers for part in ("lora_down.weight", "lora_up.weight", "alpha")
    }
    unet = UNet2DConditionModel.from_pretrained(tiny_root / arch / "base" / "unet")
    names = {"lora_unet_" + name.replace(".", "_") for name, _ in unet.named_modules()}
    assert layers <= names


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_unet_is_the_inpainting_kind_with_the_style_block(tiny_root, arch):
    base = tiny_root / arch / "base"
    unet = UNet2DConditionModel.from_pretrained(base / "unet")
    assert unet.config.in_channels == 9 and unet.config.out_channels == 4
    names = list(unet.attn_processors)
    assert any(n.startswith(STYLE_BLOCK[arch] + ".") for n in names)
    if arch == "sdxl":
        assert any(n.startswith("down_blocks.2.attentions.1.") for n in names)  # InstantStyle layout block
        text_1 = CLIPTextConfig.from_pretrained(base / "text_encoder")
        text_2 = CLIPTextConfig.from_pretrained(base / "text_encoder_2")
        assert unet.config.addition_embed_type == "text_time"
        assert unet.config.cross_attention_dim == text_1.hidden_size + text_2.hidden_size
        time_dims = 6 * unet.config.addition_time_embed_dim
        assert unet.config.projection_class_embeddings_input_dim == text_2.projection_dim + time_dims


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_ip_adapter_checkpoint_is_in_the_original_format(tiny_root, arch, variant):
    state = _checkpoint(tiny_root, arch, variant)
    assert {key.split(".")[0] for key in state} == {"image_proj", "ip_adapter"}
    unet = UNet2DConditionModel.from_pretrained(tiny_root / arch / "base" / "unet")
    cross_attn = [i for i, n in enumerate(unet.attn_processors) if n.endswith("attn2.processor")]
    assert cross_attn == list(range(1, 2 * len(cross_attn), 2))
    ip_keys = {k for k in state if k.startswith("ip_adapter.")}
    assert ip_keys == {f"ip_adapter.{i}.{w}.weight" for i in cross_attn for w in ("to_k_ip", "to_v_ip")}
    cross_dim = unet.config.cross_attention_dim
    if variant == "plain":
        assert state["image_proj.proj.weight"].shape[0] == 4 * cross_dim
        assert state["image_proj.norm.weight"].shape == (cross_dim,)
    else:
        assert state["image_proj.latents"].shape[:2] == (1, 16)
        assert state["image_proj.layers.3.0.to_kv.weight"].shape[0] % 128 == 0  # heads of 64, k and v
        assert state["image_proj.norm_out.weight"].shape == (cross_dim,)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_tokenizers_are_byte_level_clip(tiny_root, arch):
    base = tiny_root / arch / "base"
    names = {"tokenizer": "<|endoftext|>", "tokenizer_2": "!"} if arch == "sdxl" else {"tokenizer": "<|endoftext|>"}
    for name, pad in names.items():
        tokenizer = CLIPTokenizer.from_pretrained(base / name)
        assert tokenizer.model_max_length == 77
        assert tokenizer.pad_token == pad
        encoder = "text_encoder_2" if name == "tokenizer_2" else "text_encoder"
        assert len(tokenizer) <= CLIPTextConfig.from_pretrained(base / encoder).vocab_size
        ids = tokenizer("A Cat", padding="max_length", max_length=77).input_ids
        tokens = tokenizer.convert_ids_to_tokens(ids[:6])
        assert tokens == ["<|startoftext|>", "a</w>", "c", "a", "t</w>", "<|endoftext|>"]
        assert len(ids) == 77 and ids[6:] == [tokenizer.pad_token_id] * 71


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("variant", ["plain", "plus"])
def test_inpaints_with_ip_adapter_through_plain_diffusers(tiny_root, arch, variant):
    pipe = AutoPipelineForInpainting.from_pretrained(tiny_root / arch / "base")
    assert type(pipe) is PIPELINE_CLASS[arch]
    pipe.load_ip_adapter(**ModelSet(arch, tiny_root / arch, variant).ip_adapter_kwargs())
    pipe.set_progress_bar_config(disable=True)
    image, mask, reference = _inputs()

    def run():
        result = pipe(
            prompt="a red dress",
            image=image,
            mask_image=mask,
            ip_adapter_image=reference,
            num_inference_steps=2,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(0),
        )
        return result.images[0]

    pipe.set_ip_adapter_scale(0.0)
    without = run()
    pipe.set_ip_adapter_scale(STYLE_SCALE[arch])
    styled = run()
    assert styled.size == (64, 64) and styled.mode == "RGB"
    assert not np.array_equal(np.asarray(without), np.asarray(styled)), "the adapter had no effect"


def test_same_seed_gives_the_same_bytes(tiny_root, tmp_path):
    make_tiny(tmp_path)
    assert _files(tmp_path) == _files(tiny_root)
    for name in _files(tiny_root):
        assert (tmp_path / name).read_bytes() == (tiny_root / name).read_bytes(), name


def test_another_seed_gives_other_weights(tiny_root, tmp_path):
    (other,) = make_tiny(tmp_path, seed=1, sets=("sd15",))
    weights = "base/unet/diffusion_pytorch_model.safetensors"
    assert (other / weights).read_bytes() != (tiny_root / "sd15" / weights).read_bytes()


def test_unknown_arch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sd3"):
        make_tiny(tmp_path, sets=("sd3",))


@pytest.mark.parametrize("name", ["flux2-klein", "flux2-klein-base"])
def test_flux2_sets_load_as_the_real_repositories_do(tiny_root, name):
    """The real repos' model_index names the text-to-image Flux2KleinPipeline; the inpainting pipeline loads
    the same folder. Only the distilled one says `is_distilled` (so only the base model runs guidance)."""
    from diffusers import Flux2KleinInpaintPipeline

    base = tiny_root / name / "base"
    index = json.loads((base / "model_index.json").read_text())
    assert index["_class_name"] == "Flux2KleinPipeline"
    assert index["is_distilled"] is (name == "flux2-klein")
    pipe = Flux2KleinInpaintPipeline.from_pretrained(base, local_files_only=True)
    assert pipe.vae_scale_factor * 2 == 16, "the model works in 16-pixel cells, as the real one"
    assert pipe.transformer.config.joint_attention_dim == 3 * pipe.text_encoder.config.hidden_size
    chat = pipe.tokenizer.apply_chat_template(
        [{"role": "user", "content": "a cup"}], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert chat == "<|im_start|>user\na cup<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    image, mask, reference = _inputs()
    out = pipe(
        prompt="a cup",
        image=image,
        mask_image=mask,
        image_reference=reference,
        strength=0.7,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert out.size == (64, 64)
