"""Step caching: fewer model evaluations per swap by reusing what changes little from one step to the next.

SD/SDXL (DeepCache, Ma et al. 2023): the UNet's deep features move slowly across denoising steps. Every
`interval`-th step runs the whole UNet and keeps the outputs of the deep part (every down block but the
first, the mid block, every up block but the last); the steps between run only the first down block and the
last up block at full resolution, on the kept deep features. SDXL spends most of its FLOPs in the deep,
attention-heavy blocks, so interval 3 does about a third of the work on two steps out of three. diffusers has
no hook for UNets (its cache hooks are for transformer models), hence these few lines of module wrapping.

FLUX.2 (a transformer): diffusers' own TaylorSeer cache in its lite form. The first WARMUP_STEPS steps run
in full, then one step in `interval`: between them every block is skipped and the output projection is
predicted from its last full values by a first-order Taylor step. On the distilled model's 4 steps only the
last step is predicted; it pays on the base model's longer schedules. (diffusers' First Block Cache, the other
candidate, fails on FLUX.2 in diffusers 0.42: its single blocks run on the joined text+image stream, and the
hook subtracts the first double block's separate outputs from it.)

Caching changes the output (a quality trade, off by default); the same seed still gives the same bytes.
"""

from __future__ import annotations

from torch import nn


class UNetStepCache:
    """DeepCache on a diffusers UNet2DConditionModel: full UNet every `interval` calls, the shallow branch between."""

    def __init__(self, unet: nn.Module, interval: int = 3):
        if interval < 2:
            raise ValueError("step cache interval must be at least 2 (1 would cache nothing)")
        self.interval = interval
        self.calls = 0
        self.skipped = 0  # UNet calls that reused the deep features, since load
        deep = [*unet.down_blocks[1:], *([unet.mid_block] if unet.mid_block is not None else []), *unet.up_blocks[:-1]]
        self._kept: dict[int, object] = {}
        self._fresh = True
        for block in deep:
            block.forward = self._wrapped(block, block.forward)
        unet.register_forward_pre_hook(self._count)

    def reset(self) -> None:
        """Forget the kept features: call before each new image (the next call runs the whole UNet)."""
        self.calls = 0
        self._kept.clear()

    def _count(self, module, args) -> None:
        self._fresh = self.calls % self.interval == 0 or not self._kept
        self.calls += 1
        if not self._fresh:
            self.skipped += 1

    def _wrapped(self, block: nn.Module, forward):
        key = id(block)

        def cached_forward(*args, **kwargs):
            if self._fresh or key not in self._kept:
                self._kept[key] = forward(*args, **kwargs)
            return self._kept[key]

        return cached_forward


WARMUP_STEPS = 3  # full steps before the first prediction (diffusers' default): the Taylor step needs two


def enable_transformer_cache(transformer: nn.Module, interval: int) -> None:
    """diffusers' TaylorSeer (lite) on a transformer model (FLUX.2); the pipeline resets it after each image."""
    import torch
    from diffusers.hooks import TaylorSeerCacheConfig

    transformer.enable_cache(
        TaylorSeerCacheConfig(
            cache_interval=interval,
            disable_cache_before_step=WARMUP_STEPS,
            max_order=1,
            taylor_factors_dtype=torch.float32,
            use_lite_mode=True,
        )
    )
