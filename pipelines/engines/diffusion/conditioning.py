"""What steers the model besides the prompt: IP-Adapter's reference image and its per-layer scales (its masks:
ip_masks.py)."""

from __future__ import annotations

from PIL import Image

from pipelines.placement import Placement, grid_reference

# Per-layer IP-Adapter scales, each from a source. InstantStyle (Wang et al. 2024, arXiv:2404.02733; its README
# and infer_style.py; diffusers' IP-Adapter guide, "Style and layout control") injects the reference into one
# style block at scale 1.0 for style, plus one layout block at 1.0 for style and layout. The other layers carry
# the subject at 0.6, the scale of diffusers' IP-Adapter inpainting example (0.5 is its "balanced" text/image
# point, 1.0 image only). No layer runs above its source. (InstantStyle's own inpainting example uses 2.0 on the
# style block, but it starts from noise at strength 0.99; here the placed pixels carry the look already.)
# SD1.5's blocks are InstantStyle's SD1.5 note (infer_style_sd15.py, "experimental"): style up_blocks.1,
# layout down_blocks.2 and the mid block.
STYLE_BLOCKS = {"sdxl": ("up_blocks.0.attentions.1",), "sd15": ("up_blocks.1",)}
LAYOUT_BLOCKS = {"sdxl": ("down_blocks.2.attentions.1",), "sd15": ("down_blocks.2", "mid_block")}
STYLE_SCALE = 1.0  # x fashion_strength
LAYOUT_SCALE = 1.0  # x subject_strength
SUBJECT_SCALE = 0.6  # x subject_strength, every other IP-Adapter layer
BACKGROUND = (255, 255, 255)


def reference_image(placement: Placement, horizontal: int, vertical: int) -> Image.Image:
    """The IP-Adapter image: the cut-out (or the pattern's grid, as it covers the box) padded to a square on white.

    The image encoder's processor resizes the short side and centre-crops: a square loses nothing of the
    object, where a tall product would lose its top and bottom and a wide 10 x 2 grid most of its tiles.
    """
    reference = placement.reference
    if placement.mode == "pattern":
        reference = grid_reference(reference, placement.box, horizontal, vertical)
    return pad_to_square(reference)


def reference_key(placement: Placement, digest: str, repeats: tuple[int, int]) -> tuple:
    """What a reference image depends on: the object (its digest), the mode and, for a pattern, its grid (the
    repeats and the box's size; an object's reference is the same whatever the mask)."""
    if placement.mode != "pattern":
        return (digest, placement.mode)
    left, top, right, bottom = placement.box
    return (digest, placement.mode, repeats, (right - left, bottom - top))


def pad_to_square(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    square = Image.new("RGB", (side, side), BACKGROUND)
    square.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2), rgba.getchannel("A"))
    return square


def ip_adapter_scales(subject: float, fashion: float) -> dict[str, float]:
    """The scale of each block kind: style (fashion), layout and the rest (subject)."""
    return {"style": STYLE_SCALE * fashion, "layout": LAYOUT_SCALE * subject, "other": SUBJECT_SCALE * subject}


def set_ip_adapter_strengths(unet, arch: str, subject: float, fashion: float) -> dict[str, float]:
    """Set every IP-Adapter processor's scale from ip_adapter_scales; returns them by processor name."""
    scales = ip_adapter_scales(subject, fashion)
    applied: dict[str, float] = {}
    for name, processor in unet.attn_processors.items():
        if hasattr(processor, "to_k_ip"):
            value = scales[block_kind(name, arch)]
            processor.scale = [value] * len(processor.scale)
            applied[name] = value
    return applied


def block_kind(name: str, arch: str) -> str:
    """ "style", "layout" or "other" for an attention processor's name."""
    for kind, blocks in (("style", STYLE_BLOCKS[arch]), ("layout", LAYOUT_BLOCKS[arch])):
        if any(name.startswith(block + ".") for block in blocks):
            return kind
    return "other"
