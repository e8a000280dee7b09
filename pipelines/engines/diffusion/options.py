"""How to run the diffusion engine. Kept apart from diffusion.py so that reading settings needs no torch."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.placement.cache import OBJECT_CACHE_BYTES

# Above this many processed pixels the VAE decodes in tiles. Crop-and-stitch processes every swap at the
# model's native area (1024^2 for SDXL, 512^2 for SD1.5; an elongated box at most 2x native on its long
# side, same area), so with this default tiling never triggers for the engine's own crops: it is a guard
# for configurations that process more than that.
VAE_TILING_ABOVE_PIXELS = 1536 * 1536


@dataclass(frozen=True)
class DiffusionOptions:
    """Device, dtype, memory savers and the fast path.

    "auto" picks for the machine (CUDA bf16/fp16, MPS fp16, CPU fp32); a `None` switch means "auto":
    on where it helps (CUDA), off elsewhere.

    Fast path (each measured on and off by `segswap bench --ablate`):
    sdpa: PyTorch scaled_dot_product_attention processors everywhere (IP-Adapter's 2_0 variant
        included); off = diffusers' classic matmul-softmax processors.
    fuse_qkv: one q/k/v matmul in every self-attention. Only self-attention is fused: diffusers'
        `pipe.fuse_qkv_projections()` replaces the IP-Adapter processors and breaks IP-Adapter.
    channels_last: UNet and VAE weights and activations in NHWC (cuDNN's fast layout). Off unless asked for:
        PyTorch's CUDA GroupNorm (up to 2.11 at least, pytorch#111824) hands back NCHW, so every ResNet block
        converts its activations both ways, and the UNet's ResNets run eagerly (compilation is regional).
    fp8: the denoiser's linear layers in float8 (fp8.py; torchao, compute capability 8.9+), off by default: it
        changes the output a little, and a machine without float8 tensor cores refuses it at load.
    compile: `torch.compile` of the UNet's repeated transformer blocks (regional compilation);
        the first swap at each new processing shape compiles (the server warms up at native size).
    object_cache_bytes: cut-outs and reference images of recent objects, by content digest (0: none).
    embed_cache_size: LRU entries for IP-Adapter image embeddings (keyed by the object image's
        content hash, repeats and adapter) and prompt embeddings (keyed by prompt, negative prompt);
        0 turns the cache off. Cached and uncached swaps give identical bytes.
    vae_tiling: always decode in tiles; vae_tiling_above_pixels: tile only above this processed area.
    vae_upcast: whether the set's VAE keeps its `force_upcast` (SDXL's: diffusers then casts the whole VAE to
        float32 and back on each of a swap's two encodes). None: only in float16, where SDXL's VAE overflows;
        bfloat16 has float32's range and needs no round trip. SD1.5's pipeline never upcasts its encodes.

    Fewer model evaluations (each changes the output; off by default):
    few_step: SD sets fuse the LCM-LoRA into the UNet and denoise in 4-8 steps without guidance
        (pipelines/models/few_step.py); FLUX.2 [klein] is step-distilled already and runs its 4 steps either way.
    step_cache: reuse what changes little between steps (step_cache.py), the whole model running once every
        step_cache_interval steps: DeepCache on SD UNets, diffusers' TaylorSeer (lite) on FLUX.2.

    The FLUX.2 [klein] engine reads device, dtype, cpu_offload, embed_cache_size (prompt embeddings), compile
    (its double and single blocks; not together with the step cache, whose hooks break their graphs) and the
    step cache; the other pieces are the UNet's and IP-Adapter's.
    """

    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    vae_tiling: bool = False
    vae_tiling_above_pixels: int = VAE_TILING_ABOVE_PIXELS
    vae_upcast: bool | None = None
    sdpa: bool = True
    fuse_qkv: bool = True
    channels_last: bool | None = None
    compile: bool | None = None
    fp8: bool = False
    embed_cache_size: int = 64
    object_cache_bytes: int = OBJECT_CACHE_BYTES
    few_step: bool = False
    step_cache: bool = False
    step_cache_interval: int = 3

    def resolved(self, device_type: str) -> DiffusionOptions:
        """These options with every "auto" switch decided for a device type ("cuda", "cpu", "mps")."""
        from dataclasses import replace

        on_cuda = device_type == "cuda"
        return replace(
            self,
            channels_last=bool(self.channels_last),
            compile=on_cuda if self.compile is None else self.compile,
        )
