"""The repeats are counts, as the contract says: `horizontal_repeat` tiles across the grown mask's box and
`vertical_repeat` down, each tile box_w / h by box_h / v, whatever the box's aspect and the pattern's."""

import numpy as np
import pytest
from PIL import Image

from pipelines import CompositeEngine, SwapJob
from pipelines.imageops import grow_mask, mask_box, normalize_mask
from pipelines.placement import grid_reference
from tests.conftest import rect_mask
from tests.pipelines.grids import assert_grid, cell_centres, disk_tile, red_components

SCENE_SIZE = (480, 420)
GROW = 5
# Mask boxes (left, top, right, bottom, inclusive as drawn): wide, tall and square.
BOXES = {"wide": (40, 60, 434, 354), "tall": (180, 30, 304, 380), "square": (90, 60, 389, 359)}
REPEATS = [(4, 1), (10, 1), (1, 4), (4, 10), (3, 2), (1, 1), (7, 5)]


def pattern_job(mask_box_drawn, horizontal, vertical, **overrides) -> SwapJob:
    values = dict(
        main_image=Image.new("RGB", SCENE_SIZE, (128, 128, 128)),  # plain: the shading is 1 everywhere
        mask_image=rect_mask(SCENE_SIZE, mask_box_drawn),
        object_image=disk_tile(),
        horizontal_repeat=horizontal,
        vertical_repeat=vertical,
        growmask=GROW,
        mode="pattern",
    )
    values.update(overrides)
    return SwapJob(**values)


@pytest.mark.parametrize("shape", BOXES)
@pytest.mark.parametrize(("horizontal", "vertical"), REPEATS)
def test_the_composite_puts_h_tiles_across_the_grown_box_and_v_down(shape, horizontal, vertical):
    job = pattern_job(BOXES[shape], horizontal, vertical)
    out = np.asarray(CompositeEngine().swap(job))
    box = mask_box(grow_mask(normalize_mask(job.mask_image, SCENE_SIZE), GROW))
    assert_grid(red_components(out), cell_centres(box, horizontal, vertical), tolerance=1.5)


def test_the_counts_hold_for_a_pattern_of_another_aspect():
    """A wide pattern in a tall box: the tile's aspect follows the box (no cut tile, no letterbox)."""
    job = pattern_job(BOXES["tall"], 2, 3, object_image=disk_tile((90, 30)))
    out = np.asarray(CompositeEngine().swap(job))
    box = mask_box(grow_mask(normalize_mask(job.mask_image, SCENE_SIZE), GROW))
    assert_grid(red_components(out), cell_centres(box, 2, 3), tolerance=1.5)


@pytest.mark.parametrize(("horizontal", "vertical"), [(4, 1), (1, 4), (10, 10), (3, 7)])
def test_the_reference_grid_is_the_placed_grid_at_the_box_aspect(horizontal, vertical):
    box = (0, 0, 400, 300)
    reference = grid_reference(disk_tile(), box, horizontal, vertical)
    assert abs(reference.width / reference.height - 400 / 300) < 0.02
    size = (0, 0, *reference.size)
    assert_grid(red_components(np.asarray(reference)), cell_centres(size, horizontal, vertical), tolerance=1.0)


def test_the_reference_grid_keeps_the_tiles_detail_within_its_cap():
    tile = disk_tile()
    small = grid_reference(tile, (0, 0, 40, 30), 2, 2)  # a small box: the tiles keep the pattern's pixels
    assert abs(small.width * small.height - 4 * 60 * 60) < 200
    huge = grid_reference(Image.new("RGB", (2000, 2000)), (0, 0, 400, 300), 10, 10)
    assert huge.width * huge.height <= 1024 * 1024 * 1.01


def test_object_mode_ignores_the_repeats_and_auto_with_one_by_one_is_an_object():
    one = pattern_job(BOXES["square"], 1, 1, mode="object")
    many = pattern_job(BOXES["square"], 4, 3, mode="object")
    assert CompositeEngine().swap(one).tobytes() == CompositeEngine().swap(many).tobytes()
    auto = pattern_job(BOXES["square"], 1, 1, mode="auto")
    assert CompositeEngine().swap(auto).tobytes() == CompositeEngine().swap(one).tobytes()
