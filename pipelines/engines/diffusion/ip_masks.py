"""IP-Adapter masks on each attention layer's real token grid, computed once per swap.

The reference image may only act where the model repaints. diffusers' IPAdapterAttnProcessor takes a
full-size mask and, in every layer at every step, guesses the layer's token grid from its token count and the
mask's aspect ratio (IPAdapterMaskProcessor.downsample). Where a latent side is odd on the way down (the
UNet's stride-2 convolutions round up), the guess is the transposed grid and every row of the mask lands one
token off: a 1016x1032 SDXL crop's 32-px layers get half their tokens wrong. Here the grids come from the
UNet itself: a layer in down block i (or the up block mirroring it) works at the latent halved i times, each
time as its downsampler rounds; the mid block at the deepest level. One mask per level is made once per swap,
on the model's device: the share of each token's pixels that the repaint mask covers (a token running past
the crop's edge counts only its pixels inside). The processor multiplies its layer's mask into the
IP-Adapter branch; everything else is diffusers' IPAdapterAttnProcessor2_0 (or the classic one without SDPA).

The masks travel as the pipeline's `cross_attention_kwargs["ip_adapter_masks"]`, the channel diffusers routes
to IP-Adapter processors (and no other processor warns about): a tuple, one tensor per level, where diffusers'
own form is a list of full-size masks.
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor, IPAdapterAttnProcessor2_0

_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.|^mid_block\.")


def layer_level(name: str, unet) -> int:
    """The level (how many times the latent was halved) an attention processor of `unet` works at."""
    match = _BLOCK.match(name)
    if match is None:
        raise ValueError(f"{name} is not in a down, mid or up block")
    deepest = len(unet.down_blocks) - 1
    if match.group(1) == "down_blocks":
        return int(match.group(2))
    if match.group(1) == "up_blocks":
        return len(unet.up_blocks) - 1 - int(match.group(2))
    return deepest


def token_grids(latent: tuple[int, int], levels: int, padding: int = 1) -> list[tuple[int, int]]:
    """(height, width) in tokens at each level, from the latent's: each level halves the one above as the UNet's
    downsampler does (3x3 convolution, stride 2, `padding` on each side; diffusers pads (0, 1) where it is 0)."""
    grids = [latent]
    for _ in range(levels - 1):
        grids.append(tuple(_halved(side, padding) for side in grids[-1]))
    return grids


def _halved(side: int, padding: int) -> int:
    padded = side + 2 * padding if padding else side + 1
    return (padded - 3) // 2 + 1


def token_masks(mask: np.ndarray, cell: int, grids: list[tuple[int, int]], device, dtype) -> tuple:
    """One (1, tokens, 1) mask per level: the covered share of each token's pixels in `mask` (a boolean
    pixel mask, sides multiples of `cell`, the latent's pixel size); a token past the edge counts its pixels
    inside only (avg_pool2d's ceil mode divides by them)."""
    pixels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(device)[None, None]
    masks = []
    for level, grid in enumerate(grids):
        stride = cell * 2**level
        pooled = F.avg_pool2d(pixels, stride, stride, ceil_mode=True)
        if tuple(pooled.shape[-2:]) != grid:
            raise ValueError(f"a {mask.shape[1]}x{mask.shape[0]} mask pools to {pooled.shape[-2:]}, not {grid}")
        masks.append(pooled.reshape(1, -1, 1).to(dtype))
    return tuple(masks)


class _GridMasked:
    """The IP-Adapter branch times this layer's precomputed token mask (a tuple in `ip_adapter_masks`);
    diffusers' own processor for anything else. Setting `scale` (as diffusers' set_ip_adapter_scale does)
    also fills `weights`, the tensor the masked branch reads: the compiled graph takes it as an input, so a new
    scale never recompiles, and a zero scale runs the (small) branch instead of a guarded skip."""

    level: int
    weights: torch.Tensor

    @property
    def scale(self) -> list:
        return self._scale

    @scale.setter
    def scale(self, value: list) -> None:
        self._scale = value
        weights = self._buffers.get("weights")  # absent while diffusers' __init__ sets the first scale
        if weights is not None:
            for index, scalar in enumerate(_scalars(value)):
                weights[index].fill_(scalar)

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states=None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks=None,
    ) -> torch.Tensor:
        if not isinstance(ip_adapter_masks, tuple):  # none, or diffusers' own full-size masks
            return super().__call__(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks
            )
        if not isinstance(encoder_hidden_states, tuple) or hidden_states.ndim != 3 or attn.spatial_norm is not None:
            # not in a UNet's transformer blocks, where IP-Adapter sits (diffusers' processor for the rest)
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale)
        text, images = encoder_hidden_states
        token_mask = ip_adapter_masks[self.level]
        if token_mask.shape[1] != hidden_states.shape[1]:
            raise ValueError(f"IP-Adapter mask of {token_mask.shape[1]} tokens for {hidden_states.shape[1]}")
        residual = hidden_states
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, text.shape[1], text.shape[0])
        query = attn.to_q(hidden_states)
        hidden_states = self.attend(attn, query, attn.to_k(text), attn.to_v(text), attention_mask)
        for index, (state, to_k, to_v) in enumerate(zip(images, self.to_k_ip, self.to_v_ip, strict=True)):
            state = state.reshape(state.shape[0], -1, state.shape[-1])  # (batch, images x tokens, width)
            branch = self.attend(attn, query, to_k(state), to_v(state), None)
            hidden_states = hidden_states + self.weights[index] * (branch * token_mask)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class GridMaskedIPAdapterProcessor(_GridMasked, IPAdapterAttnProcessor2_0):
    """IPAdapterAttnProcessor2_0 with per-level token masks (scaled_dot_product_attention)."""

    @staticmethod
    def attend(attn: Attention, query, key, value, attention_mask) -> torch.Tensor:
        batch, heads = query.shape[0], attn.heads
        head = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head).transpose(1, 2) for t in (query, key, value))
        if attention_mask is not None:
            attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0)
        return out.transpose(1, 2).reshape(batch, -1, heads * head).to(query.dtype)


class GridMaskedIPAdapterProcessorClassic(_GridMasked, IPAdapterAttnProcessor):
    """IPAdapterAttnProcessor (matmul and softmax) with per-level token masks."""

    @staticmethod
    def attend(attn: Attention, query, key, value, attention_mask) -> torch.Tensor:
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))
        probabilities = attn.get_attention_scores(query, key, attention_mask)
        return attn.batch_to_head_dim(torch.bmm(probabilities, value))


def grid_masked(processor, name: str, unet, sdpa: bool):
    """`processor` (diffusers' IP-Adapter processor for layer `name`) as a grid-masked one, weights and scales
    carried over."""
    kind = GridMaskedIPAdapterProcessor if sdpa else GridMaskedIPAdapterProcessorClassic
    converted = kind(processor.hidden_size, processor.cross_attention_dim, processor.num_tokens, list(processor.scale))
    converted.to_k_ip, converted.to_v_ip = processor.to_k_ip, processor.to_v_ip
    converted.level = layer_level(name, unet)
    device = processor.to_k_ip[0].weight.device
    converted.register_buffer("weights", torch.tensor(_scalars(processor.scale), device=device), persistent=False)
    return converted


def _scalars(scale: list) -> list[float]:
    """One float per adapter (diffusers allows a list per adapter, one per image; one image here)."""
    return [float(value[0] if isinstance(value, list) else value) for value in scale]
