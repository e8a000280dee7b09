"""What steers the model besides the prompt: IP-Adapter's reference image, its per-layer scales and its mask."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pipelines.imageops import tile_object
from pipelines.placement import Placement

# InstantStyle's style block, where fashion_strength goes. SDXL: the second attention of the first up block
# (named by the InstantStyle paper). SD1.5: its first up block has no attention, and InstantStyle's SD1.5
# style block is the whole second up block, all three of its transformers.
STYLE_BLOCKS = {"sdxl": "up_blocks.0.attentions.1", "sd15": "up_blocks.1"}
STYLE_SCALE = 2.0  # the style block's scale at fashion_strength 1 (InstantStyle's own inpainting example)
SUBJECT_SCALE = 0.8  # every other IP-Adapter layer at subject_strength 1
PATTERN_TILES = 2  # a pattern is shown to the encoder as at most 2 x 2 tiles, never the whole tiling
BACKGROUND = (255, 255, 255)


def reference_image(placement: Placement, horizontal: int, vertical: int) -> Image.Image:
    """The IP-Adapter image: the cut-out (or a few tiles of the pattern) padded to a square on white.

    The image encoder's processor resizes the short side and centre-crops: a square loses nothing of the
    object, where a tall product would lose its top and bottom and a 10 x 2 tiling most of its tiles.
    """
    reference = placement.reference
    if placement.mode == "pattern":
        reference = tile_object(reference, min(horizontal, PATTERN_TILES), min(vertical, PATTERN_TILES))
    return pad_to_square(reference)


def pad_to_square(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2), rgba.getchannel("A"))
    return square


def set_ip_adapter_strengths(unet, style_block: str, subject: float, fashion: float) -> dict[str, float]:
    """Per-layer IP-Adapter scales: STYLE_SCALE x fashion on the style block, SUBJECT_SCALE x subject elsewhere.

    Returns the scale set on each IP-Adapter attention processor, by processor name.
    """
    scales: dict[str, float] = {}
    for name, processor in unet.attn_processors.items():
        if not hasattr(processor, "to_k_ip"):
            continue
        value = STYLE_SCALE * fashion if name.startswith(style_block + ".") else SUBJECT_SCALE * subject
        processor.scale = [value] * len(processor.scale)
        scales[name] = value
    return scales


DEEPEST_STRIDE = 64  # pixels per token at the UNets' deepest attention (SD1.5's mid block: latent / 8)


def ip_adapter_masks(mask: np.ndarray, size: tuple[int, int]) -> list | None:
    """The reference confined to the region being repainted: diffusers' IPAdapterMaskProcessor, one adapter.

    None where diffusers cannot downsample the mask: it divides by zero when a layer has fewer tokens than
    the crop's width/height ratio (a strip along an image's edge). The reference then acts on the whole
    crop, of which only the grown mask is kept anyway.
    """
    from diffusers.image_processor import IPAdapterMaskProcessor

    width, height = size
    if math.ceil(width / DEEPEST_STRIDE) * math.ceil(height / DEEPEST_STRIDE) < width / height:
        return None
    picture = Image.fromarray((mask * 255).astype(np.uint8), "L")
    return [IPAdapterMaskProcessor().preprocess([picture], height=size[1], width=size[0])]
