"""IP-Adapter masks on each attention layer's real token grid (pipelines/engines/diffusion/ip_masks.py).

The grids are checked against the real SD1.5 and SDXL inpainting UNets (their shipped configs, built on the
meta device: shapes without weights); the masks against a geometric downsample written here independently,
on every crop size the crop function makes; the processor against diffusers' own; and a tiny SDXL swap for
what each layer really receives."""

import cProfile
import math
import pstats
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers.image_processor import IPAdapterMaskProcessor  # noqa: E402
from diffusers.models.attention_processor import (  # noqa: E402
    Attention,
    IPAdapterAttnProcessor,
    IPAdapterAttnProcessor2_0,
)
from diffusers.models.transformers.transformer_2d import Transformer2DModel  # noqa: E402

from pipelines.engines.diffusion.engine import LATENT_MARGIN, DiffusionEngine  # noqa: E402
from pipelines.engines.diffusion.geometry import crop_geometry, with_context  # noqa: E402
from pipelines.engines.diffusion.ip_masks import (  # noqa: E402
    GridMaskedIPAdapterProcessor,
    GridMaskedIPAdapterProcessorClassic,
    grid_masked,
    layer_level,
    token_grids,
    token_masks,
)
from pipelines.models.model_sets import ModelSet  # noqa: E402
from server.benchmark.full_models import config  # noqa: E402
from tests.pipelines.jobs import diffusion_job  # noqa: E402
from tests.pipelines.recording import RecordingPipeline  # noqa: E402

NATIVE = {"sd15": 512, "sdxl": 1024}
CELL = 8


@pytest.fixture(scope="module")
def real_unets():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return {arch: UNet2DConditionModel(**config(f"{arch}/unet.json")) for arch in NATIVE}


def real_grids(unet, latent: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """(height, width) of the tokens each attention block of `unet` sees for a latent, by running it on meta."""
    grids, handles = {}, []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):

            def record(module, args, kwargs, name=name):
                grids[name] = tuple((args[0] if args else kwargs["hidden_states"]).shape[-2:])

            handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    extra = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        extra["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, pooled, device="meta"),
            "time_ids": torch.zeros(1, 6, device="meta"),
        }
    try:
        unet(
            torch.zeros(1, unet.config.in_channels, *latent, device="meta"),
            torch.tensor([10], device="meta"),
            encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim, device="meta"),
            **extra,
        )
    finally:
        for handle in handles:
            handle.remove()
    return grids


@pytest.mark.parametrize("arch", list(NATIVE))
@pytest.mark.parametrize("latent", [(127, 129), (129, 127), (128, 64), (33, 95), (7, 256), (125, 131)])
def test_token_grids_are_the_real_unets(real_unets, arch, latent):
    unet = real_unets[arch]
    grids = token_grids(latent, len(unet.down_blocks), unet.config.downsample_padding)
    seen = real_grids(unet, latent)
    assert seen, "no attention block ran"
    for block, grid in seen.items():
        assert grids[layer_level(block + ".transformer_blocks.0.attn2.processor", unet)] == grid, block


def all_crop_sizes(native: int) -> set[tuple[int, int]]:
    """Every processing size the crop function makes for mask boxes of 16 to 2048 px a side (every 4 px: the
    set is the same as every 2 px), with room for context, against a corner, and filling the image (where the
    box cannot take a bucket's aspect and keeps its own)."""
    sizes = set()
    for width in range(16, 2049, 4):
        for height in range(16, 2049, 4):
            for box, image in (
                ((5000, 5000, 5000 + width, 5000 + height), (20000, 20000)),
                ((0, 0, width, height), (width + 5000, height + 5000)),
                ((0, 0, width, height), (width, height)),
            ):
                sizes.add(crop_geometry(with_context(box, image), image, native)[1])
    return sizes


def repaint_mask(size: tuple[int, int]) -> np.ndarray:
    """A pipeline mask as the engine makes one: an object's grown mask in the middle of its context, widened by
    LATENT_MARGIN."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 2, height // 2), (max(1, width // 3), max(1, height // 3)), 15, 0, 360, 1, -1)
    radius = LATENT_MARGIN
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask, kernel).astype(bool)


def geometric_downsample(mask: np.ndarray, stride: int) -> np.ndarray:
    """Each token's covered share of its stride x stride pixels, counting only the pixels inside the mask
    (written with numpy sums, independently of the production code)."""
    height, width = mask.shape
    rows, cols = math.ceil(height / stride), math.ceil(width / stride)
    covered = np.zeros((rows * stride, cols * stride))
    inside = np.zeros_like(covered)
    covered[:height, :width] = mask
    inside[:height, :width] = 1
    sums = [a.reshape(rows, stride, cols, stride).sum(axis=(1, 3)) for a in (covered, inside)]
    return sums[0] / sums[1]


@pytest.mark.parametrize("arch", list(NATIVE))
def test_no_token_is_misplaced_on_any_crop_size(real_unets, arch):
    unet = real_unets[arch]
    levels, padding = len(unet.down_blocks), unet.config.downsample_padding
    sizes = all_crop_sizes(NATIVE[arch])
    assert len(sizes) > 200
    misplaced, diffusers_misplaced = 0, 0
    for size in sorted(sizes):
        mask = repaint_mask(size)
        grids = token_grids((size[1] // CELL, size[0] // CELL), levels, padding)
        ours = token_masks(mask, CELL, grids, "cpu", torch.float32)
        for level, grid in enumerate(grids):
            expected = geometric_downsample(mask, CELL * 2**level)
            assert expected.shape == grid
            got = ours[level].reshape(grid).numpy()
            misplaced += int(((got > 0.5) != (expected > 0.5)).sum())
            assert np.abs(got - expected).max() < 1e-5, (size, level)
            diffusers_misplaced += _diffusers_misplaced(mask, grid, expected)
    assert misplaced == 0
    assert diffusers_misplaced > 0  # what the token masks replace: diffusers' guessed grids shear some crops


def _diffusers_misplaced(mask: np.ndarray, grid: tuple[int, int], expected: np.ndarray) -> int:
    """Tokens diffusers' IPAdapterMaskProcessor.downsample puts on the wrong side of 0.5 for this layer (all of
    them where it fails: a grid guessed 0 tokens wide, on the most elongated crops)."""
    pixels = torch.from_numpy(mask.astype(np.float32))[None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns where its guessed grid has another token count
        try:
            guessed = IPAdapterMaskProcessor.downsample(pixels, 1, grid[0] * grid[1], 1)
        except (RuntimeError, ZeroDivisionError):
            return expected.size
    return int(((guessed.reshape(grid).numpy() > 0.5) != (expected > 0.5)).sum())


def test_the_reviewed_crop_is_sheared_by_diffusers_and_exact_here(real_unets):
    """The review's case: a 1016 x 1032 SDXL crop (what a 760 x 772 box gave before crops took bucket sizes;
    the strips that keep their own aspect still make such sizes), whose 32-px layers (the style block's among
    them) run on 33 x 32 tokens; diffusers' guess from the token count is the transposed grid."""
    unet = real_unets["sdxl"]
    size = (1016, 1032)
    latent = (size[1] // CELL, size[0] // CELL)
    grids = token_grids(latent, len(unet.down_blocks), unet.config.downsample_padding)
    assert grids[2] == real_grids(unet, latent)["up_blocks.0.attentions.1"] == (33, 32)
    mask = repaint_mask(size)
    expected = geometric_downsample(mask, CELL * 4)
    assert _diffusers_misplaced(mask, grids[2], expected) > 0.05 * expected.size
    ours = token_masks(mask, CELL, grids, "cpu", torch.float32)[2].reshape(grids[2]).numpy()
    assert ((ours > 0.5) != (expected > 0.5)).sum() == 0


class _Blocks:
    """The two attributes layer_level reads from a UNet."""

    down_blocks = [0, 1, 2]
    up_blocks = [0, 1, 2]


def _attention_and_processor(base):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=16, heads=2, dim_head=16)
    processor = base(hidden_size=32, cross_attention_dim=16, num_tokens=(4,), scale=0.7)
    for linear in [*processor.to_k_ip, *processor.to_v_ip]:
        torch.nn.init.normal_(linear.weight, std=0.3)
    return attn, processor


@pytest.mark.parametrize(
    ("base", "ours"),
    [
        (IPAdapterAttnProcessor2_0, GridMaskedIPAdapterProcessor),
        (IPAdapterAttnProcessor, GridMaskedIPAdapterProcessorClassic),
    ],
)
def test_the_processor_is_diffusers_with_the_branch_masked_per_token(base, ours):
    attn, theirs = _attention_and_processor(base)
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
    converted = grid_masked(theirs, name, _Blocks, sdpa=base is IPAdapterAttnProcessor2_0)
    assert type(converted) is ours and converted.level == 1
    hidden, text = torch.randn(2, 12, 32), torch.randn(2, 5, 16)
    states = (text, [torch.randn(2, 1, 4, 16)])
    with torch.no_grad():
        full = theirs(attn, hidden, states)
        theirs.scale = [0.0]
        text_only = theirs(attn, hidden, states)
        theirs.scale = [0.7]
        token_mask = torch.rand(1, 12, 1)
        ones, zeros = torch.ones(1, 12, 1), torch.zeros(1, 12, 1)
        masks = lambda level_mask: (None, level_mask)  # noqa: E731  (level 1 is this layer's)
        assert torch.allclose(converted(attn, hidden, states, ip_adapter_masks=masks(ones)), full, atol=1e-5)
        assert torch.allclose(converted(attn, hidden, states, ip_adapter_masks=masks(zeros)), text_only, atol=1e-5)
        masked = converted(attn, hidden, states, ip_adapter_masks=masks(token_mask))
        # to_out is affine: the output moves from text-only toward full by each token's share
        assert torch.allclose(masked, text_only + token_mask * (full - text_only), atol=1e-5)
        assert torch.allclose(converted(attn, hidden, states), full, atol=1e-5)  # no masks: diffusers' own path


@pytest.fixture(scope="module")
def sdxl(tiny_weights):
    engine = DiffusionEngine(ModelSet("sdxl", tiny_weights / "sdxl", "plus"))
    engine.pipe = RecordingPipeline(engine.pipe)
    return engine


def test_every_ip_layer_receives_its_grids_mask_in_a_real_swap(sdxl):
    """Through the real pipeline on an odd latent: each IP-Adapter layer's mask, laid on the token grid its
    block really runs at, is the geometric downsample of the pipeline's mask."""
    unet = sdxl.pipe.unet
    job = diffusion_job(steps=2)
    received: list[tuple[str, tuple[int, int], torch.Tensor]] = []
    grid_of: dict[str, tuple[int, int]] = {}
    handles = []
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):

            def record_grid(module, args, kwargs, name=name):
                grid_of[name] = tuple((args[0] if args else kwargs["hidden_states"]).shape[-2:])

            handles.append(module.register_forward_pre_hook(record_grid, with_kwargs=True))
        elif name.endswith("attn2") and isinstance(module.processor, GridMaskedIPAdapterProcessor):

            def record_mask(module, args, kwargs, name=name):
                block = name.split(".transformer_blocks")[0]
                received.append((name, grid_of[block], kwargs["ip_adapter_masks"][module.processor.level]))

            handles.append(module.register_forward_pre_hook(record_mask, with_kwargs=True))
    try:
        sdxl.swap(job)
    finally:
        for handle in handles:
            handle.remove()
    call = sdxl.pipe.calls[-1]
    mask = np.asarray(call["mask_image"]) > 127
    latent = (call["height"] // CELL, call["width"] // CELL)
    assert any(side % 2 for side in latent), f"the job should give an odd latent side, got {latent}"
    assert {name for name, _, _ in received} == {
        n.removesuffix(".processor") for n, p in unet.attn_processors.items() if hasattr(p, "to_k_ip")
    }
    for name, grid, token_mask in received:
        level = layer_level(name, unet)
        expected = geometric_downsample(mask, CELL * 2**level)
        assert expected.shape == grid, name
        assert np.abs(token_mask.reshape(grid).numpy() - expected).max() < 1e-6, name


def test_a_swap_makes_the_masks_once_and_no_layer_resizes_them(sdxl):
    """diffusers resized the mask in every IP-Adapter layer at every step (one interpolate each); a profile of
    one swap now shows one token_masks call and fewer interpolations than IP-Adapter layer calls."""
    steps = 3
    profile = cProfile.Profile()
    profile.runcall(sdxl.swap, diffusion_job(steps=steps))
    calls = {(Path(file).name, function): stat[1] for (file, _, function), stat in pstats.Stats(profile).stats.items()}
    assert calls.get(("ip_masks.py", "token_masks")) == 1
    assert ("image_processor.py", "downsample") not in calls
    ip_layers = sum(hasattr(p, "to_k_ip") for p in sdxl.pipe.unet.attn_processors.values())
    assert calls.get(("functional.py", "interpolate"), 0) < ip_layers * steps
