"""Object similarity: cosine of CLIP image embeddings, the object on its own vs the output's masked region.

It uses the image encoder an installed model set already has (IP-Adapter's CLIP ViT-H), so it needs no extra
download; without one, eval says so and skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from PIL import Image

from pipelines.errors import WeightsError
from pipelines.models.model_sets import SETS, ModelSet, find_model_set

Similarity = Callable[[Image.Image, Image.Image], float]


def clip_similarity(weights_dir: Path) -> Similarity | None:
    """A similarity function on the first complete SD set's image encoder, or None when there is none
    (FLUX.2 sets have no CLIP image encoder)."""
    model_set = _set_with_image_encoder(Path(weights_dir))
    if model_set is None:
        return None
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    encoder = CLIPVisionModelWithProjection.from_pretrained(model_set.image_encoder, local_files_only=True).eval()
    side = encoder.config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})

    @torch.no_grad()
    def similarity(reference: Image.Image, crop: Image.Image) -> float:
        pictures = [_on_white_square(reference), _on_white_square(crop)]
        embeds = encoder(**processor(images=pictures, return_tensors="pt")).image_embeds
        embeds = torch.nn.functional.normalize(embeds, dim=-1)
        return float((embeds[0] * embeds[1]).sum())

    return similarity


def _set_with_image_encoder(weights_dir: Path) -> ModelSet | None:
    for name, arch in SETS.items():
        if arch == "flux2":
            continue
        try:
            found = find_model_set(weights_dir, name)
        except WeightsError:  # weights_dir is a set folder of another kind
            return None
        if found is not None:
            return found
    return None


def _on_white_square(image: Image.Image) -> Image.Image:
    """Padded to a square on white, so the encoder's centre crop cuts nothing away."""
    rgba = image.convert("RGBA")
    side = max(rgba.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2), rgba.getchannel("A"))
    return square
