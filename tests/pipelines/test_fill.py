"""The exemplar fill (pipelines/placement/fill.py): texture carried into the hole, nothing of the erased thing
left, nothing copied from a distinct object, nothing outside the hole touched, same seed same bytes. On the
eval suite's photographs (pipelines/evaluation/suite, SOURCES.md)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines.evaluation.metrics import fill_texture, structure_left
from pipelines.imageops import mask_box
from pipelines.placement.fill import pull_push, remove_content
from pipelines.placement.layout import continued_lines
from pipelines.placement.sources import allowed_sources

SUITE = Path(__file__).resolve().parents[2] / "pipelines" / "evaluation" / "suite"


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(SUITE / name).convert("RGB"), dtype=np.float32)


def mask_of(name: str) -> np.ndarray:
    return np.asarray(Image.open(SUITE / name).convert("L")) > 127


def erase(scene: np.ndarray, mask: np.ndarray, seed: int = 0) -> np.ndarray:
    return remove_content(scene, mask, mask_box(mask), seed)


@pytest.mark.parametrize(
    ("scene", "mask"),
    [
        ("brick.jpg", "brick_patch_mask.png"),
        ("grass.jpg", "grass_patch_mask.png"),
        ("chelsea.jpg", "chelsea_fur_mask.png"),
    ],
)
def test_the_fill_is_as_textured_as_its_surroundings(scene, mask):
    original, hole = photo(scene), mask_of(mask)
    out = erase(original, hole)
    assert 0.6 <= fill_texture(out, original, hole) <= 1.6
    assert np.array_equal(out[~hole], original[~hole])
    # The measure is one: a smooth fill of the same hole misses it.
    assert fill_texture(pull_push(original, hole), original, hole) < 0.3


def test_a_thin_structure_erased_from_the_sky_leaves_nothing_behind():
    original, rod = photo("rocket.jpg"), mask_of("rocket_rod_mask.png")
    assert structure_left(original, original, rod) > 0.2  # the light rod against the dark sky
    assert structure_left(erase(original, rod), original, rod) <= 0.01


def scene_with_a_red_cup() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grass with a hole, and a red disc 6 px beyond the hole's edge, itself textured (the grass, tinted)."""
    grass = photo("grass.jpg")[:256, :256].copy()
    hole = np.zeros(grass.shape[:2], np.uint8)
    cv2.circle(hole, (100, 128), 40, 1, -1)
    cup = np.zeros_like(hole)
    cv2.circle(cup, (196, 128), 50, 1, -1)
    scene = grass.copy()
    scene[cup > 0] = (grass[::-1, ::-1] * np.float32([1.3, 0.35, 0.35]))[cup > 0]
    return scene, hole.astype(bool), cup.astype(bool)


def red(image: np.ndarray) -> np.ndarray:
    return image[..., 0] - image[..., 1:].max(axis=-1) > 40


def test_nothing_is_copied_from_a_distinct_object_near_the_hole():
    scene, hole, cup = scene_with_a_red_cup()
    for seed in range(3):
        assert not (red(erase(scene, hole, seed)) & hole).any()


def test_sources_stop_at_a_strong_edge_and_not_at_texture():
    scene, hole, cup = scene_with_a_red_cup()
    allowed = allowed_sources(scene, hole)
    inside_cup = cv2.erode(cup.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert not allowed[inside_cup].any()
    grass = ~cup & ~hole & ~cv2.dilate(cup.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool)
    assert allowed[grass].mean() > 0.98  # blades of grass are texture, not edges
    brick_hole = mask_of("brick_patch_mask.png")
    assert allowed_sources(photo("brick.jpg"), brick_hole)[~brick_hole].mean() > 0.98  # nor are joints


def test_same_seed_same_pixels_and_another_seed_another_fill():
    original, hole = photo("grass.jpg")[:200, :200].copy(), np.zeros((200, 200), bool)
    hole[60:140, 70:130] = True
    first = erase(original, hole, seed=5)
    assert np.array_equal(first, erase(original, hole, seed=5))
    assert not np.array_equal(first, erase(original, hole, seed=6))


def test_a_hole_with_nothing_around_it_is_filled_smoothly():
    scene = np.full((40, 40, 3), 90.0, np.float32)
    scene[:, :2] = (10, 200, 10)
    hole = np.zeros((40, 40), bool)
    hole[:, 2:] = True  # no source patch fits beside a 2 px strip
    out = erase(scene, hole)
    assert np.isfinite(out).all() and np.array_equal(out[:, :2], scene[:, :2])


def test_the_fill_takes_the_light_of_where_it_is():
    """Patches copied from the lit side of a surface into its shade bring their light along; along the hole's
    edge the fill meets the surroundings' brightness (the seam correction)."""
    grass = photo("grass.jpg")[:256, :256]
    light = np.linspace(1.3, 0.45, 256, dtype=np.float32)[None, :, None]  # lit on the left, in shade on the right
    scene = np.clip(grass * light, 0, 255)
    hole = np.zeros((256, 256), np.uint8)
    cv2.circle(hole, (190, 128), 36, 1, -1)
    hole = hole.astype(bool)
    out = erase(scene, hole, seed=2)
    grey = out @ np.float32([0.299, 0.587, 0.114])
    disc = np.ones((9, 9), np.uint8)
    inner = hole & ~cv2.erode(hole.astype(np.uint8), disc).astype(bool)
    outer = cv2.dilate(hole.astype(np.uint8), disc).astype(bool) & ~hole
    for side in (slice(0, 190), slice(190, 256)):  # the lit and the shaded half of the edge alike
        assert (
            abs(
                grey[inner][:, None][np.isin(np.argwhere(inner)[:, 1], np.arange(256)[side])].mean()
                - grey[outer][:, None][np.isin(np.argwhere(outer)[:, 1], np.arange(256)[side])].mean()
            )
            < 6
        )


def test_a_placed_objects_hidden_old_content_is_no_source():
    """Under a swap the fill runs only where the new object leaves the scene visible; what it hides still holds the
    old object, which must not be copied into the visible rest."""
    from pipelines.placement.objects import place_object

    scene = photo("grass.jpg")[:256, :256].copy()
    grown = np.zeros((256, 256), bool)
    grown[40:220, 50:210] = True
    scene[grown] = (220, 30, 30)  # the old object fills the whole mask
    product = Image.new("RGBA", (60, 150), (20, 60, 200, 255))  # narrow: most of the mask stays visible
    out, alpha = place_object(scene, grown, (50, 40, 210, 220), product, 0.0, seed=0)
    visible = grown.copy()
    visible[40:220, 50:210] &= alpha < 0.5
    assert visible.sum() > 5000 and not (red(out) & visible).any()


def test_a_neighbour_that_only_reaches_the_ring_at_one_place_is_no_ground():
    """A disc of the ground's own colour, outlined, just touching the ring around the hole: the kickstand's bike,
    the spoon's cup. The ground (a concrete-like floor: the grass photo blurred and flattened) is what holds the
    ring; the neighbour gives no patches."""
    grass = cv2.GaussianBlur(photo("grass.jpg")[:256, :256], (0, 0), 3) * 0.3 + 120
    hole = np.zeros((256, 256), np.uint8)
    cv2.circle(hole, (90, 128), 36, 1, -1)
    disc = np.zeros((256, 256), np.uint8)
    cv2.circle(disc, (172, 128), 40, 1, -1)  # 6 px past the hole's edge: inside its 15 px ring
    scene = grass.copy()
    scene[disc > 0] = grass.reshape(-1, 3).mean(axis=0)
    cv2.circle(scene, (172, 128), 40, (0, 0, 0), 3)
    allowed = allowed_sources(scene, hole.astype(bool))
    inside = cv2.erode(disc, np.ones((9, 9), np.uint8)).astype(bool)
    assert not allowed[inside].any()
    assert allowed[(disc == 0) & (hole == 0)].mean() > 0.9


def test_a_patch_is_compared_only_where_the_scene_will_show():
    """Old content a placed object will hide is nothing to match: the patch distance skips it."""
    from pipelines.placement.patchmatch import INF, patch_distance

    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (40, 40, 3)).astype(np.float32)
    unseen = np.zeros((40, 40), bool)
    unseen[10:30, 20:30] = True  # the right part of the target patch at (20, 20)
    target, source = image[17:24, 17:24], image[7:14, 7:14]
    visible = ~unseen[17:24, 17:24]
    expected = float(((target - source) ** 2)[visible].sum())
    assert patch_distance(image, unseen, 20, 20, 10, 10, 3, INF) == pytest.approx(expected, rel=1e-5)
    everything = float(((target - source) ** 2).sum())
    assert patch_distance(image, np.zeros_like(unseen), 20, 20, 10, 10, 3, INF) == pytest.approx(everything, rel=1e-5)


def test_the_fill_hands_the_hidden_old_content_to_the_search_as_unseen(monkeypatch):
    from pipelines.placement import fill, patchmatch

    scene = photo("grass.jpg")[:128, :128].copy()
    hole = np.zeros((128, 128), bool)
    hole[40:90, 40:60] = True
    hidden = np.zeros((128, 128), bool)
    hidden[40:90, 60:90] = True  # beside the hole: under a placed object
    calls = []
    real = patchmatch.search
    monkeypatch.setattr(
        patchmatch, "search", lambda image, unseen, *rest: calls.append(unseen.copy()) or real(image, unseen, *rest)
    )
    fill.remove_content(scene, hole, mask_box(hole | hidden), 0, exclude=hole | hidden)
    finest = [unseen for unseen in calls if unseen.shape == (128, 128)]
    assert finest and all(np.array_equal(unseen, hidden) for unseen in finest)


def scene_with_a_line() -> tuple[np.ndarray, np.ndarray]:
    """Two textured grounds, light above and dark below (the grass photo, shifted), meeting on a straight
    horizontal line at row 100 that crosses a hole off its middle: a wall and a floor, sea and sky."""
    scene = photo("grass.jpg")[:240, :320] * 0.5
    scene[:100] += 150
    hole = np.zeros(scene.shape[:2], bool)
    hole[60:180, 80:240] = True
    return scene.astype(np.float32), hole


def test_the_line_two_grounds_meet_on_is_a_source():
    """Patches may straddle the edge between two grounds (the band the edge finder marks is as wide as its blur):
    without such patches no fill can carry the line across the hole."""
    scene, hole = scene_with_a_line()
    allowed = allowed_sources(scene, hole)
    beside = ~hole.any(axis=0)
    assert allowed[90:111][:, beside].mean() > 0.98
    assert allowed[~hole].mean() > 0.98


def test_a_line_across_the_hole_stays_straight():
    scene, hole = scene_with_a_line()
    for seed in range(2):
        grey = cv2.GaussianBlur(erase(scene, hole, seed) @ np.float32([0.299, 0.587, 0.114]), (0, 0), 3)
        middle = (grey[:100][~hole[:100]].mean() + grey[100:][~hole[100:]].mean()) / 2
        rows = [60 + int(np.argmax(grey[60:180, col] < middle)) for col in np.flatnonzero(hole.any(axis=0))]
        assert np.abs(np.array(rows) - 100).max() <= 4


def test_a_colour_of_neither_ground_is_no_source_when_the_ring_holds_two():
    """The ring holds two textured grounds (a light wall, a darker floor); on the floor, away from the hole, lies a
    rug darker still, its outline faded (no strong edge). One Gaussian over the ring's colours stretches from the
    wall to the floor and takes the rug in; the floor's own colours do not."""
    texture = cv2.GaussianBlur(photo("grass.jpg")[:240, :320], (0, 0), 1) * 0.3
    rug = np.zeros((240, 320), np.float32)
    cv2.ellipse(rug, (160, 205), (70, 20), 0, 0, 360, 1.0, -1)
    rug = cv2.GaussianBlur(rug, (0, 0), 20)[..., None] / cv2.GaussianBlur(rug, (0, 0), 20).max()
    scene = np.clip(texture + 110 + np.where(np.arange(240)[:, None, None] < 100, 90, -90 * rug), 0, 255)
    hole = np.zeros((240, 320), bool)
    hole[60:150, 100:220] = True
    allowed = allowed_sources(scene.astype(np.float32), hole)
    assert not allowed[rug[..., 0] > 0.8].any()
    assert allowed[:100][~hole[:100]].mean() > 0.95 and allowed[100:170][~hole[100:170]].mean() > 0.95


def test_what_the_hole_holds_is_no_evidence_of_the_ground():
    """A dark object in the hole, reaching its edge, and beside the hole (past the ring) a slightly darker patch of
    the same textured ground with a clear outline: the step of a kerb, a rug. Blurred with the hole, the object's
    outline spreads over the ring and passes for the ground's texture, and the patch's outline is no longer an
    edge; the hole's content must not be read."""
    ground = cv2.GaussianBlur(photo("grass.jpg")[:256, :256], (0, 0), 3) * 0.3 + 120
    hole = np.zeros((256, 256), np.uint8)
    cv2.circle(hole, (90, 128), 40, 1, -1)
    patch = np.zeros((256, 256), np.uint8)
    cv2.circle(patch, (200, 128), 30, 1, -1)  # 40 px past the hole's edge: beyond the ring
    scene = ground - 40 * patch[..., None]
    scene[hole > 0] = 10  # the object being removed
    allowed = allowed_sources(scene.astype(np.float32), hole.astype(bool))
    assert not allowed[cv2.erode(patch, np.ones((9, 9), np.uint8)) > 0].any()
    far = (cv2.dilate(patch, np.ones((21, 21), np.uint8)) == 0) & (hole == 0)
    assert allowed[far].mean() > 0.95


def test_the_line_is_found_where_it_crosses_and_a_round_rim_is_not_carried():
    """The layout (layout.py) joins the two ends of the wall/floor line, on its row. The rim of a large dark disc
    on the same ground, crossing a hole, is within a few degrees of straight where it enters, but it curves away
    outside the hole: no line to carry; the same ground cut by a straight edge is one."""
    scene, hole = scene_with_a_line()
    lines = continued_lines(scene, hole, np.zeros_like(hole))
    assert len(lines) == 1 and all(abs(end[0] - 99.5) <= 2 for end in lines[0])
    rows, cols = np.mgrid[:240, :320]
    rim = np.zeros((240, 320), bool)
    rim[80:150, 120:200] = True
    for radius, joined in ((600, 0), (100_000, 1)):  # both reach row 110 in the hole's middle
        disc = (rows - 110 - radius) ** 2 + (cols - 160) ** 2 <= radius**2
        ground = photo("grass.jpg")[:240, :320] * 0.3 + 150 - 100 * disc[..., None]
        assert len(continued_lines(ground.astype(np.float32), rim, np.zeros_like(rim))) == joined
