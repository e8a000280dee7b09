"""A glimpse of the image while it is denoised: the latents mapped to RGB by a fixed linear map per architecture,
with no VAE decode (the approximation previewers use; the factors are the widely used ones for SD1.5 and SDXL
latents as the pipelines hold them, scaled by the VAE's scaling factor). One pixel per latent: 1/8 of the crop."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LATENT_RGB = {  # rows: latent channels; columns: R, G, B
    "sd15": (
        [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
        [0.0, 0.0, 0.0],
    ),
    "sdxl": (
        [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
        [0.1084, -0.0175, -0.0011],
    ),
}


def latent_preview(latents: torch.Tensor, arch: str) -> Image.Image:
    """The first image of a (batch, 4, h, w) latent batch as RGB, h x w pixels."""
    factors, bias = LATENT_RGB[arch]
    weights = torch.tensor(factors, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latents[0, :4].detach().float().cpu(), weights) + torch.tensor(bias)
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
