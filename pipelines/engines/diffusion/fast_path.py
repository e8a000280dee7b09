"""The fast path: attention processors, fused projections, memory format and regional compilation.

Each piece is a field of DiffusionOptions (a SEGSWAP_* setting) and is measured on and off by
`segswap bench --ablate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch
from diffusers.models.attention_processor import (
    Attention,
    AttnProcessor,
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)
from torch import nn

from pipelines.engines.diffusion.fp8 import quantize_linears as fp8_linears
from pipelines.engines.diffusion.ip_masks import grid_masked
from pipelines.engines.diffusion.options import DiffusionOptions
from pipelines.torch_runtime import first_line

log = logging.getLogger("segswap.diffusion")
T = TypeVar("T")


def apply_fast_path(pipe, options: DiffusionOptions, offload: bool = False) -> dict[str, bool]:
    """Attention processors, memory format, fused projections and compilation, as `options` say.

    Order matters: channels-last before fusing (the fused weights are shared views), fusing before FP8, and
    both before compiling. Returns what was applied.
    """
    use_sdpa_processors(pipe, options.sdpa)
    channels_last = bool(options.channels_last)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    # FusedAttnProcessor2_0 is SDPA-only; with offload, moving shared views would duplicate them.
    fused = bool(options.fuse_qkv and options.sdpa and not offload) and fuse_self_attention(pipe.unet) > 0
    fp8 = bool(options.fp8) and fp8_linears(pipe.unet) > 0  # after fusing: the fused q/k/v is quantised
    compiled = bool(options.compile)
    if compiled:
        compile_blocks(pipe.unet)
    return {"sdpa": options.sdpa, "channels_last": channels_last, "fuse_qkv": fused, "fp8": fp8, "compile": compiled}


def use_sdpa_processors(pipe, sdpa: bool = True) -> None:
    """Every attention on scaled_dot_product_attention, or, with `sdpa` off, on diffusers' classic processors;
    IP-Adapter layers on the grid-masked processors of ip_masks.py (weights and scales carried over)."""
    plain = AttnProcessor2_0 if sdpa else AttnProcessor
    processors = {}
    for name, processor in pipe.unet.attn_processors.items():
        if isinstance(processor, (IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0)):
            processors[name] = grid_masked(processor, name, pipe.unet, sdpa)
        elif type(processor) in (AttnProcessor, AttnProcessor2_0):
            processors[name] = processor if type(processor) is plain else plain()
        else:
            processors[name] = processor
    pipe.unet.set_attn_processor(processors)
    pipe.vae.set_attn_processor(plain())


@torch.no_grad()
def fuse_self_attention(unet) -> int:
    """Fuse q/k/v into one matmul in every transformer block's self-attention; returns how many.

    Cross-attention keeps its own processor (IP-Adapter's, which reads to_k_ip/to_v_ip): diffusers'
    `fuse_qkv_projections()` would replace those too and drop IP-Adapter. to_q/to_k/to_v stay, as views
    of the fused weight, so nothing is held twice.
    """
    from diffusers.models.attention import BasicTransformerBlock

    count = 0
    for block in unet.modules():
        # Only the transformer blocks' attn1: the IP-Adapter Plus resampler's attentions (also under the
        # UNet, in encoder_hid_proj) are "self" attentions called with a context, and must stay unfused.
        module = block.attn1 if isinstance(block, BasicTransformerBlock) and not block.only_cross_attention else None
        if (
            not isinstance(module, Attention)
            or module.is_cross_attention
            or type(module.processor) is not AttnProcessor2_0
        ):
            continue
        module.fuse_projections(fuse=True)
        for name in ("weight", "bias"):
            fused = getattr(module.to_qkv, name)
            if fused is None:
                continue
            parts = fused.split([module.to_q.out_features, module.to_k.out_features, module.to_v.out_features])
            for linear, part in zip((module.to_q, module.to_k, module.to_v), parts, strict=True):
                setattr(linear, name, nn.Parameter(part, requires_grad=False))
        module.set_processor(FusedAttnProcessor2_0())
        count += 1
    return count


def unfuse_self_attention(unet) -> int:
    """Undo `fuse_self_attention`: every fused self-attention runs its own to_q/to_k/to_v again (the views of the
    fused weight), so that a LoRA loaded on them runs; returns how many."""
    count = 0
    for module in unet.modules():
        if isinstance(module, Attention) and isinstance(module.processor, FusedAttnProcessor2_0):
            module.set_processor(AttnProcessor2_0())
            module.fused_projections = False
            count += 1
    return count


def compile_blocks(model) -> None:
    """Regional compilation: `torch.compile` each repeated transformer block, not the whole model (the UNet's
    transformer blocks, FLUX.2's double and single blocks).

    Every block shares one compiled graph per input shape, so warm-up takes seconds, not minutes.
    A new processing shape (another box aspect) compiles once more; after the second shape dynamo
    marks the sizes dynamic. The recompile limit is raised so changing IP-Adapter scales (0 skips a
    branch) and both CFG batch sizes never push a block back to eager.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    if getattr(model, "_repeated_blocks", None) and hasattr(model, "compile_repeated_blocks"):
        model.compile_repeated_blocks(fullgraph=True)
        return
    from diffusers.models.attention import BasicTransformerBlock

    for module in model.modules():
        if isinstance(module, BasicTransformerBlock):
            module.compile(fullgraph=True)


def is_compile_error(exc: BaseException) -> bool:
    """An error of dynamo or inductor (not of the model): what a failed compilation raises."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return isinstance(exc, (TorchDynamoException, InductorError))


def uncompile_blocks(model) -> int:
    """Undo `compile_blocks`: every compiled module runs eagerly again; returns how many."""
    count = 0
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
            count += 1
    return count


def with_eager_fallback(generate: Callable[[], T], model) -> tuple[T, bool]:
    """`generate()` with `model`'s blocks compiled; if the compiler fails (on some machine, for some shape), the
    blocks run eagerly from then on and `generate()` runs again: compilation is an optimisation and must not take
    the engine down. Returns the result and whether the blocks are still compiled."""
    try:
        return generate(), True
    except Exception as exc:
        if not is_compile_error(exc):
            raise
        log.warning("torch.compile failed (%s); the model runs eagerly from now on", first_line(exc))
        uncompile_blocks(model)
        return generate(), False
