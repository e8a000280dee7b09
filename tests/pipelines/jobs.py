"""The small swap job the diffusion tests share: an odd, non-square scene with a box mask."""

from PIL import Image

from pipelines import SwapJob
from tests.conftest import noise_image, rect_mask

SIZE = (97, 61)  # odd and not square on purpose


def diffusion_job(**overrides) -> SwapJob:
    values = dict(
        main_image=noise_image(SIZE, seed=5),
        mask_image=rect_mask(SIZE, (30, 15, 60, 40)),
        object_image=Image.new("RGB", (24, 24), (0, 180, 40)),
        prompt="a green cube",
        steps=2,
        seed=11,
        growmask=3,
    )
    values.update(overrides)
    return SwapJob(**values)
