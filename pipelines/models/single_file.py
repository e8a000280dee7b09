"""Single-file checkpoints: one `.safetensors` in the original Stable Diffusion key format as a set's base.

Model sites share SD1.5 / SDXL inpainting models as one file in the key format of the
original training code (CompVis / Stability, as A1111 and ComfyUI save them):

    model.diffusion_model.*                  the UNet
    first_stage_model.*                      the VAE
    cond_stage_model.transformer.*           SD1.5: the CLIP text encoder (transformers layout)
    conditioner.embedders.0.transformer.*    SDXL: CLIP ViT-L text encoder (transformers layout)
    conditioner.embedders.1.model.*          SDXL: OpenCLIP ViT-bigG text encoder (OpenCLIP layout)

A model set then holds `base.safetensors` next to a `base/` folder with only the small
diffusers files (model_index.json, */config.json, scheduler/, tokenizer*/): the
architecture comes from those configs, the numbers from the checkpoint, nothing from the hub.

`export_single_file` writes a diffusers-format base in that original format. It is the
exact inverse of diffusers' converters (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`, `convert_open_clip_checkpoint`
in `diffusers.loaders.single_file_utils`), so a round trip gives back the same tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipelines.errors import WeightsError
from pipelines.models.model_sets import model_set_at

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = {"sd15": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's second text encoder
CONV_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
INPAINT_CHANNELS = 9  # 4 noisy latents + 1 mask + 4 masked-image latents

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
MODEL_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")

# ---------------------------------------------------------------- rename tables (diffusers -> original)

UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL's text_time embedding
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_RESNET = {  # layers inside one ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_TOP_LEVEL = {
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    **{name: name for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out")},
    **{name: name for name in ("quant_conv", "post_quant_conv")},
}
VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_TOP_LEVEL = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {  # inside one transformer layer; q/k/v are fused into in_proj separately
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}

_UNET_BLOCK = re.compile(r"(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)")
_UNET_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_VAE_BLOCK = re.compile(
    r"(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)"
)
_VAE_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")


# ---------------------------------------------------------------- export: diffusers folder -> one file


def export_single_file(set_dir: Path, out_path: Path) -> None:
    """Write the base of a diffusers-format model set (`<set_dir>/base/`) as one original-format checkpoint.

    UNet, VAE and text encoder(s) go in; tokenizers and scheduler stay in base/ as they are
    configs, not weights. Keeps the stored dtype.
    """
    base = model_set_at(set_dir).base
    parts = [part for part in MODEL_PARTS if (base / part).is_dir()]
    checkpoint = original_checkpoint(
        {part: _read_weights(base / part) for part in parts},
        unet_config=_read_json(base / "unet" / "config.json"),
        vae_config=_read_json(base / "vae" / "config.json"),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in checkpoint.items()}, out_path, metadata={"format": "pt"})


def original_checkpoint(states: dict[str, dict[str, torch.Tensor]], unet_config: dict, vae_config: dict) -> dict:
    """The single-file state dict of a pipeline's models, from their diffusers state dicts by component name.

    SD1.5 has `unet`, `vae`, `text_encoder`; SDXL adds `text_encoder_2`.
    """
    arch = "sdxl" if "text_encoder_2" in states else "sd15"
    checkpoint = {}
    checkpoint.update(_prefixed(UNET_PREFIX, unet_to_original(states["unet"], unet_config)))
    checkpoint.update(_prefixed(VAE_PREFIX, vae_to_original(states["vae"], vae_config)))
    checkpoint.update(_prefixed(CLIP_PREFIX[arch], clip_to_original(states["text_encoder"])))
    if arch == "sdxl":
        checkpoint.update(_prefixed(OPEN_CLIP_PREFIX, open_clip_to_original(states["text_encoder_2"])))
    return checkpoint


def unet_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> original `openaimodel.UNetModel` keys (no prefix).

    The original numbers its blocks flat: `input_blocks.0` is conv_in, then each down level
    has `layers_per_block` slots (ResBlock `.0`, transformer `.1`) plus one for its
    downsampler; each up level has `layers_per_block + 1` slots, its upsampler sitting in
    the last slot after the ResBlock (`.1`) or after the transformer (`.2`).
    """
    per_level = config["layers_per_block"] + 1
    up_with_attention = {int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k}
    return {_unet_key(key, per_level, up_with_attention): value for key, value in state.items()}


def _unet_key(key: str, per_level: int, up_with_attention: set[int]) -> str:
    if (renamed := _rename_prefix(key, UNET_TOP_LEVEL)) is not None:
        return renamed
    if match := _UNET_MID.fullmatch(key):
        part, index, rest = match.group(1), int(match.group(2)), match.group(3)
        if part == "resnets":
            return f"middle_block.{2 * index}.{_rename_first(rest, UNET_RESNET, key)}"
        return f"middle_block.1.{rest}"
    match = _UNET_BLOCK.fullmatch(key)
    if match is None:
        raise ValueError(f"unexpected UNet weight {key!r}")
    blocks, level, part, index, rest = match.groups()
    level, index = int(level), int(index)
    last_slot = part in ("downsamplers", "upsamplers")
    if blocks == "down_blocks":
        block = f"input_blocks.{1 + level * per_level + (per_level - 1 if last_slot else index)}"
    else:
        block = f"output_blocks.{level * per_level + (per_level - 1 if last_slot else index)}"
    if part == "resnets":
        return f"{block}.0.{_rename_first(rest, UNET_RESNET, key)}"
    if part == "attentions":
        return f"{block}.1.{rest}"
    if part == "downsamplers":
        return f"{block}.0.op.{rest.removeprefix('conv.')}"
    return f"{block}.{2 if level in up_with_attention else 1}.{rest}"  # upsamplers: rest is conv.*


def vae_to_original(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> original `first_stage_model` keys (no prefix).

    The original numbers decoder levels from the lowest resolution up (reverse of
    diffusers) and stores the mid attention's projections as 1x1 convolutions.
    """
    up_levels = len(config["up_block_types"])
    converted = {}
    for key, value in state.items():
        original = _vae_key(key, up_levels)
        if ".mid.attn_1." in original and original.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # Linear -> 1x1 conv
        converted[original] = value
    return converted


def _vae_key(key: str, up_levels: int) -> str:
    if (renamed := _rename_prefix(key, VAE_TOP_LEVEL)) is not None:
        return renamed
    if match := _VAE_MID.fullmatch(key):
        coder, part, index, rest = match.group(1), match.group(2), int(match.group(3)), match.group(4)
        if part == "resnets":
            return f"{coder}.mid.block_{index + 1}.{_rename_first(rest, VAE_RESNET, key)}"
        return f"{coder}.mid.attn_1.{_rename_first(rest, VAE_ATTENTION, key)}"
    match = _VAE_BLOCK.fullmatch(key)
    if match is None:
        raise ValueError(f"unexpected VAE weight {key!r}")
    coder, blocks, level, part, index, rest = match.groups()
    level = int(level)
    if blocks == "down_blocks":
        block = f"{coder}.down.{level}"
    else:
        block = f"{coder}.up.{up_levels - 1 - level}"
    if part == "resnets":
        return f"{block}.block.{index}.{_rename_first(rest, VAE_RESNET, key)}"
    return f"{block}.{'downsample' if part == 'downsamplers' else 'upsample'}.{rest}"  # rest is conv.*


def clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel keys -> original keys (no prefix): the same names under `text_model.`.

    transformers >= 5.6 saves CLIPTextModel without the `text_model.` level; the original
    files have it. Real files also carry the position_ids buffer, so this writes it too.
    """
    converted = {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in state.items()}
    positions = converted["text_model.embeddings.position_embedding.weight"].shape[0]
    converted.setdefault("text_model.embeddings.position_ids", torch.arange(positions).unsqueeze(0))
    return converted


def open_clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection keys -> OpenCLIP keys (no prefix).

    OpenCLIP fuses q/k/v into one `in_proj` and stores the projection as a matrix
    applied on the right (the transpose of the Linear weight).
    """
    converted = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (layer, weight|bias) -> {q, k, v}
    for key, value in state.items():
        if key == "text_model.embeddings.position_ids":
            continue
        if key == "text_projection.weight":
            converted["text_projection"] = value.T.contiguous()
        elif key in OPEN_CLIP_TOP_LEVEL:
            converted[OPEN_CLIP_TOP_LEVEL[key]] = value
        elif (match := _CLIP_LAYER.fullmatch(key)) is None:
            raise ValueError(f"unexpected text encoder weight {key!r}")
        elif (qkv := re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", match.group(2))) is not None:
            fused.setdefault((match.group(1), qkv.group(2)), {})[qkv.group(1)] = value
        else:
            layer, rest = match.groups()
            converted[f"transformer.resblocks.{layer}.{_rename_first(rest, OPEN_CLIP_LAYER, key)}"] = value
    for (layer, param), qkv in fused.items():
        converted[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]])
    return converted


def _rename_prefix(path: str, table: dict[str, str]) -> str | None:
    """`path` with its leading module name renamed by `table`, or None if no entry matches."""
    for name, original in table.items():
        if path.startswith(name + "."):
            return original + path[len(name) :]
    return None


def _rename_first(rest: str, table: dict[str, str], key: str) -> str:
    """Rename the module path at the start of `rest` (`norm1.weight` -> `in_layers.0.weight`) by `table`."""
    renamed = _rename_prefix(rest, table)
    if renamed is None:
        raise ValueError(f"unexpected weight {key!r}")
    return renamed


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state.items()}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """One diffusers/transformers component's weights: a single file, an fp16 variant, or shards."""
    index = next(folder.glob("*.safetensors.index.json"), None)
    if index is not None:
        files = sorted(set(_read_json(index)["weight_map"].values()))
    else:
        found = sorted(p.name for p in folder.glob("*.safetensors"))
        plain = [name for name in found if name in ("model.safetensors", "diffusion_pytorch_model.safetensors")]
        files = plain or found[:1]
    if not files:
        raise WeightsError(f"no .safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def strip_base_weights(base: Path) -> None:
    """Delete the weight files of unet/, vae/ and the text encoders, keeping configs and tokenizers.

    What remains is the config-only `base/` that goes next to a `base.safetensors`.
    """
    for part in MODEL_PARTS:
        for pattern in WEIGHT_PATTERNS:
            for path in (Path(base) / part).glob(pattern):
                path.unlink()


# ---------------------------------------------------------------- load: one file + config folder -> pipeline


def load_single_file_pipeline(pipeline_class, checkpoint: Path, config_dir: Path, dtype: torch.dtype, **kwargs):
    """An inpainting pipeline from an original-format checkpoint, configured by a local config-only folder.

    `config_dir` is a diffusers pipeline folder without weights: every component's
    architecture comes from there, so nothing is detected or fetched. Raises WeightsError
    for a checkpoint that is unreadable, of the other architecture, not an inpainting
    model, or lacking weights the configs call for; other failures propagate as diffusers
    raises them. `kwargs` go to `from_single_file` (components, pipeline options).
    """
    checkpoint, config_dir = Path(checkpoint), Path(config_dir)
    sdxl = (config_dir / "text_encoder_2").is_dir()
    _check_checkpoint(checkpoint, config_dir, sdxl)
    if sdxl and "text_encoder_2" not in kwargs:
        kwargs["text_encoder_2"] = _load_open_clip(checkpoint, config_dir, dtype)
    return pipeline_class.from_single_file(
        str(checkpoint), config=str(config_dir), local_files_only=True, dtype=dtype, **kwargs
    )


def _check_checkpoint(checkpoint: Path, config_dir: Path, sdxl: bool) -> None:
    """From the header alone: a readable file, the right architecture, an inpainting UNet, no weight missing.

    diffusers leaves a weight the file lacks uninitialised and fails later on an
    unhelpful meta-tensor error; this names the weight instead.
    """
    try:
        with safe_open(str(checkpoint), framework="pt") as handle:
            keys = set(handle.keys())
            conv_in = handle.get_slice(CONV_IN_KEY).get_shape() if CONV_IN_KEY in keys else None
    except Exception as exc:  # safetensors raises its own error type for bad headers and short files
        raise WeightsError(f"{checkpoint} is not a readable .safetensors file (truncated or corrupt?): {exc}") from exc
    if conv_in is None:
        raise WeightsError(f"{checkpoint} has no {UNET_PREFIX}* UNet weights: not an original-format SD checkpoint")
    arch, text_prefix = ("SDXL", OPEN_CLIP_PREFIX) if sdxl else ("SD1.5", CLIP_PREFIX["sd15"])
    if not any(key.startswith(text_prefix) for key in keys):
        raise WeightsError(f"{checkpoint} is not an {arch} checkpoint: it has no {text_prefix}* text encoder weights")
    if conv_in[1] != INPAINT_CHANNELS:
        raise WeightsError(
            f"{checkpoint} is not an inpainting checkpoint: its UNet takes {conv_in[1]} input channels, "
            f"inpainting needs {INPAINT_CHANNELS}"
        )
    missing = sorted(_canonical(_expected_keys(config_dir, sdxl)) - _canonical(keys))
    if missing:
        raise WeightsError(
            f"{checkpoint} lacks {len(missing)} weight(s) that the configs in {config_dir} call for, e.g. "
            f"{missing[0]}: an incomplete file, or another model than base/ describes"
        )


def _expected_keys(config_dir: Path, sdxl: bool) -> set[str]:
    """The original-format keys of the models `config_dir` describes (built empty, on the meta device)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet_config = UNet2DConditionModel.load_config(config_dir / "unet")
    vae_config = AutoencoderKL.load_config(config_dir / "vae")
    text_models = {"text_encoder": CLIPTextModel}
    if sdxl:
        text_models["text_encoder_2"] = CLIPTextModelWithProjection
    with init_empty_weights():
        models = {"unet": UNet2DConditionModel.from_config(unet_config), "vae": AutoencoderKL.from_config(vae_config)}
        for part, model_class in text_models.items():
            models[part] = model_class(CLIPTextConfig.from_pretrained(config_dir / part))
    states = {part: model.state_dict() for part, model in models.items()}
    keys = set(original_checkpoint(states, unet_config, vae_config))
    return {key for key in keys if not key.endswith(".position_ids")}  # a buffer; not every file has it


def _canonical(keys: set[str]) -> set[str]:
    """Keys as compared: diffusers reads the VAE under `vae.` as under `first_stage_model.`."""
    return {VAE_PREFIX + key.removeprefix("vae.") if key.startswith("vae.") else key for key in keys}


def _load_open_clip(checkpoint: Path, config_dir: Path, dtype: torch.dtype):
    """SDXL's OpenCLIP text encoder from its own keys only.

    diffusers tells SDXL's two encoders apart by their widths (768 and 1280 in the real
    model); given the whole file it would load the first encoder's weights into a second
    one of the same width (as in the tiny sets). Handing it only `conditioner.embedders.1.*`
    keeps that unambiguous.
    """
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    with safe_open(str(checkpoint), framework="pt") as handle:
        own = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(OPEN_CLIP_PREFIX)}
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection,
        checkpoint=own,
        subfolder="text_encoder_2",
        config=str(config_dir),
        torch_dtype=dtype,
        local_files_only=True,
    )
