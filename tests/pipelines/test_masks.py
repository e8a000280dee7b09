"""Selecting a region by a box, points or words: GrabCut on real photographs against hand-made true outlines,
SAM 2 and OWLv2 on tiny random-weight sets loaded through the same code as real ones."""

import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from pipelines import InvalidInput, WeightsError
from pipelines.evaluation import SUITE_DIR
from pipelines.evaluation.metrics import THRESHOLDS, iou
from pipelines.evaluation.selection import ellipse_in_box, load_selections
from pipelines.masks import GrabCutSegmenter, Selector, load_segmenter, select_mask

CASES = load_selections()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_box_around_a_photographed_object_finds_its_outline(case):
    """The issue's target: IoU >= 0.85 against the true outline, for a box drawn around the object."""
    assert THRESHOLDS["box_iou"] == (">=", 0.85)
    mask = GrabCutSegmenter().select(case.image, case.selector)
    assert mask.shape == case.truth.shape
    assert iou(mask, case.truth) >= 0.85


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_grabcut_beats_the_ellipse_the_box_alone_gives(case):
    """On a round object the inscribed ellipse is a strong baseline (0.67-0.93 here): the segmenter must add to it."""
    mask = GrabCutSegmenter().select(case.image, case.selector)
    assert iou(mask, case.truth) > iou(ellipse_in_box(case.truth.shape, case.selector.box), case.truth) + 0.02


SCENE = (320, 240)
SHAPES = {  # non-convex outlines, in SCENE pixels: what an ellipse in their box cannot follow
    "L": [("rectangle", (90, 50, 140, 190), 255), ("rectangle", (90, 140, 240, 190), 255)],
    "ring": [("ellipse", (90, 50, 230, 190), 255), ("ellipse", (130, 90, 190, 150), 0)],
    "star": [("star", (160, 120, 80, 32), 255)],
    "mug": [  # a body and a handle whose hole shows the ground
        ("ellipse", (160, 85, 245, 165), 255),
        ("ellipse", (180, 102, 228, 148), 0),
        ("rectangle", (100, 60, 190, 190), 255),
    ],
}
GROUNDS = {  # a textured ground from one suite photograph, the object's surface from another
    "fur-on-grass": (("grass.jpg", (0, 0, 512, 384)), ("chelsea.jpg", (100, 50, 400, 275))),
    "coffee-on-brick": (("brick.jpg", (0, 0, 512, 384)), ("cup_studio.jpg", (150, 120, 370, 285))),
}


def outline(shape: str, scale: int = 4) -> np.ndarray:
    """The shape's coverage (0..1) at SCENE size, drawn `scale` times larger and averaged down: soft edges."""
    canvas = Image.new("L", (SCENE[0] * scale, SCENE[1] * scale), 0)
    draw = ImageDraw.Draw(canvas)
    for kind, (a, b, c, d), fill in SHAPES[shape]:
        if kind == "star":  # centre (a, b), outer and inner radius
            angles = np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2 == 0, c, d)
            xs, ys = scale * (a + radii * np.cos(angles)), scale * (b - radii * np.sin(angles))
            draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill)
        else:
            getattr(draw, kind)([scale * a, scale * b, scale * c, scale * d], fill=fill)
    return np.asarray(canvas.resize(SCENE, Image.Resampling.BOX), np.float32) / 255


def photo_crop(name: str, box: tuple[int, int, int, int]) -> np.ndarray:
    picture = Image.open(SUITE_DIR / name).convert("RGB").crop(box)
    return np.asarray(picture.resize(SCENE, Image.Resampling.LANCZOS), np.float32)


@pytest.mark.parametrize("ground", GROUNDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_grabcut_follows_a_non_convex_outline_that_the_boxs_ellipse_cannot(shape, ground):
    coverage = outline(shape)
    backdrop, surface = (photo_crop(*source) for source in GROUNDS[ground])
    scene = coverage[..., None] * surface + (1 - coverage[..., None]) * backdrop
    image = Image.fromarray(np.clip(np.rint(scene), 0, 255).astype(np.uint8))
    truth = coverage >= 0.5
    rows, cols = np.nonzero(truth)
    box = (int(cols.min()) - 4, int(rows.min()) - 4, int(cols.max()) + 5, int(rows.max()) + 5)  # as the suite's
    found = iou(GrabCutSegmenter().select(image, Selector(box=box)), truth)
    baseline = iou(ellipse_in_box(truth.shape, box), truth)
    assert found >= 0.85 and found >= baseline + 0.1, (found, baseline)


def test_nothing_outside_the_box_is_selected():
    room = Image.open(Path(__file__).resolve().parents[2] / "examples" / "room.png")
    box = (30, 180, 260, 370)  # around the sofa
    mask = GrabCutSegmenter().select(room, Selector(box=box))
    outside = np.ones(mask.shape, bool)
    outside[box[1] : box[3], box[0] : box[2]] = False
    assert not mask[outside].any()
    sofa = np.zeros(mask.shape, bool)
    sofa[190:360, 40:250] = True
    assert iou(mask, sofa) > 0.95


def test_a_loose_box_and_a_large_copy_still_find_the_outline():
    flower = next(case for case in CASES if case.name == "flower-box")
    x0, y0, x1, y1 = flower.selector.box
    loose = Selector(box=(x0 - 30, y0 - 30, x1 + 30, min(flower.image.height, y1 + 30)))
    assert iou(GrabCutSegmenter().select(flower.image, loose), flower.truth) >= 0.85
    big = flower.image.resize((flower.image.width * 3, flower.image.height * 3), Image.Resampling.LANCZOS)
    truth = np.asarray(Image.fromarray(flower.truth).resize(big.size, Image.Resampling.NEAREST))
    mask = GrabCutSegmenter().select(big, Selector(box=tuple(3 * v for v in flower.selector.box)))
    assert iou(mask, truth) >= 0.85


def test_an_inside_point_selects_the_object_it_lies_on():
    flower = next(case for case in CASES if case.name == "flower-box")
    ys, xs = np.nonzero(flower.truth)
    inside = [int(xs.mean()), int(ys.mean()), 1]
    mask = GrabCutSegmenter().select(flower.image, Selector.build(points=[inside]))
    assert mask[inside[1], inside[0]] and iou(mask, flower.truth) >= 0.8


def test_one_inside_point_anywhere_on_an_object_selects_that_object():
    """Points alone: wherever on the object the click falls, the object, not the ground around it too (the whole
    search region once started as probably object, and a click off the coin's centre lost it: IoU 0.01)."""
    for case in (case for case in CASES if case.name in ("coin-large-box", "flower-box")):
        depth = ndimage.distance_transform_edt(case.truth)
        ys, xs = np.nonzero(depth > 0.25 * depth.max())
        for k in np.random.default_rng(1).choice(len(xs), 4, replace=False):
            mask = GrabCutSegmenter().select(case.image, Selector.build(points=[[int(xs[k]), int(ys[k]), 1]]))
            assert iou(mask, case.truth) >= 0.75, (case.name, xs[k], ys[k], iou(mask, case.truth))


def test_the_readme_points_select_the_sofa_and_not_the_floor():
    room = runpy.run_path(str(Path(__file__).parents[2] / "examples" / "make_examples.py"))["room"]()
    mask = GrabCutSegmenter().select(room, Selector.build(points=[[140, 280, 1], [400, 100, 0]]))
    sofa = np.zeros(mask.shape, bool)
    sofa[190:360, 40:250] = True  # the example's sofa is a drawn rectangle
    assert iou(mask, sofa) >= 0.9, iou(mask, sofa)


def test_an_outside_point_takes_its_region_away():
    flower = next(case for case in CASES if case.name == "flower-box")
    box = list(flower.selector.box)
    plain = GrabCutSegmenter().select(flower.image, Selector.build(box=box))
    corrected = GrabCutSegmenter().select(flower.image, Selector.build(points=[[300, 200, 1], [300, 120, 0]]))
    assert plain[120, 300] and not corrected[120, 300]
    assert corrected[200, 300]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "exactly one of box, points or text"),
        ({"box": [1, 2, 3, 4], "text": "x"}, "got box, text"),
        ({"box": [10, 10, 5, 40]}, "x0 < x1"),
        ({"box": [1, 2, 3]}, "four finite numbers"),
        ({"points": [[1, 2, 0]]}, "at least one point must be inside"),
        ({"points": [[1, 2, 7]]}, "1 (inside) or 0 (outside)"),
        ({"points": [[1, 2]]}, "[x, y, label]"),
        ({"text": "   "}, "non-empty"),
    ],
)
def test_a_bad_selection_is_a_clear_input_error(values, message):
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        Selector.build(**values)


def test_a_selection_outside_the_image_is_refused():
    image = Image.new("RGB", (100, 80))
    with pytest.raises(InvalidInput, match="reaches outside the 100x80 image"):
        select_mask(image, Selector.build(box=[0, 0, 120, 50]))
    with pytest.raises(InvalidInput, match=r"point \(100, 10\) lies outside"):
        select_mask(image, Selector.build(points=[[100, 10, 1]]))


def test_words_without_models_say_which_sets_to_install():
    with pytest.raises(InvalidInput, match="needs the sam2 and owlv2 model sets"):
        select_mask(Image.new("RGB", (64, 64)), Selector.build(text="the sofa"))


def test_select_mask_is_white_on_black_at_the_image_size():
    flower = CASES[0]
    mask = select_mask(flower.image, flower.selector)
    assert mask.mode == "L" and mask.size == flower.image.size and set(np.unique(np.asarray(mask))) == {0, 255}


@pytest.fixture(scope="module")
def mask_models(tmp_path_factory):
    pytest.importorskip("transformers")
    from pipelines.models.tiny import make_tiny

    out = tmp_path_factory.mktemp("mask-models")
    make_tiny(out, sets=("sam2", "owlv2"))
    return out


def test_auto_takes_sam2_with_owlv2_when_installed(mask_models, tmp_path):
    assert load_segmenter(mask_models).name == "sam2+owlv2"
    shutil.copytree(mask_models / "sam2", tmp_path / "sam2")
    assert load_segmenter(tmp_path).name == "sam2"
    assert load_segmenter(tmp_path / "nothing").name == "grabcut"
    assert load_segmenter(mask_models, kind="grabcut").name == "grabcut"
    with pytest.raises(WeightsError, match="segswap weights download sam2"):
        load_segmenter(tmp_path / "nothing", kind="sam2")


@pytest.mark.parametrize(
    "values", [{"box": [40, 30, 160, 110]}, {"points": [[100, 70, 1]]}, {"points": [[100, 70, 1], [10, 10, 0]]}]
)
def test_sam2_selects_by_box_and_points_at_the_image_size(mask_models, values):
    segmenter = load_segmenter(mask_models)
    image = Image.new("RGB", (203, 151), (120, 80, 40))
    first = segmenter.select(image, Selector.build(**values))
    assert first.shape == (151, 203) and first.dtype == bool
    assert np.array_equal(first, segmenter.select(image, Selector.build(**values)))


def test_words_go_through_the_detector_then_sam2(mask_models):
    segmenter = load_segmenter(mask_models)
    mask = segmenter.select(Image.new("RGB", (203, 151), (120, 80, 40)), Selector.build(text="a brown box"))
    assert mask.shape == (151, 203) and mask.any()


def test_words_with_sam2_alone_name_the_missing_detector(mask_models, tmp_path):
    shutil.copytree(mask_models / "sam2", tmp_path / "sam2")
    with pytest.raises(InvalidInput, match="needs the owlv2 model set"):
        load_segmenter(tmp_path).select(Image.new("RGB", (64, 64)), Selector.build(text="a cup"))


def test_a_corrupt_sam2_set_is_a_clear_weights_error_or_grabcut_under_auto(mask_models, tmp_path):
    shutil.copytree(mask_models / "sam2", tmp_path / "sam2")
    (tmp_path / "sam2" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="cannot load the model in"):
        load_segmenter(tmp_path, kind="sam2")
    assert load_segmenter(tmp_path).name == "grabcut"  # auto: selection goes on without it


def test_a_broken_detector_fails_words_only(mask_models, tmp_path):
    for name in ("sam2", "owlv2"):
        shutil.copytree(mask_models / name, tmp_path / name)
    (tmp_path / "owlv2" / "config.json").write_text("{broken")
    segmenter = load_segmenter(tmp_path)
    image = Image.new("RGB", (120, 90), (120, 80, 40))
    assert segmenter.select(image, Selector.build(box=[10, 10, 100, 80])).shape == (90, 120)
    for _ in range(2):  # the failure is kept, not retried on every request
        with pytest.raises(WeightsError, match="cannot load the model in"):
            segmenter.select(image, Selector.build(text="a box"))


def test_a_long_description_is_cut_to_what_the_detector_reads(mask_models):
    image = Image.new("RGB", (203, 151), (120, 80, 40))
    words = "the red flower in the middle of the picture with the green leaves all around it " * 3
    assert load_segmenter(mask_models).select(image, Selector.build(text=words[:200])).shape == (151, 203)


def test_a_box_over_the_whole_image_selects_the_same_at_any_size():
    """A whole-image box leaves no sure background: its border starts as probable background at every size
    (a one-pixel border was lost when the labels were shrunk, and the whole image came back selected)."""
    flower = next(case for case in CASES if case.name == "flower-box")
    shares = []
    for width in (640, 800, 1600):
        image = flower.image.resize((width, round(width * flower.image.height / flower.image.width)))
        shares.append(GrabCutSegmenter().select(image, Selector.build(box=[0, 0, *image.size])).mean())
    assert max(shares) - min(shares) < 0.03 and max(shares) < 0.5


@pytest.mark.parametrize(
    "values",
    [
        {"box": [float("nan"), 1, 20, 20]},
        {"box": [1, 1, float("inf"), 20]},
        {"points": [[1e400, 2, 1]]},
        {"box": "1,2,3,4"},
    ],
)
def test_non_finite_or_malformed_numbers_are_input_errors(values):
    with pytest.raises(InvalidInput, match="finite numbers"):
        Selector.build(**values)


def test_library_callers_may_pass_numpy_and_floats():
    assert Selector.build(box=np.array([20, 10, 60, 40])).box == (20, 10, 60, 40)
    assert Selector.build(points=np.array([[639.6, 10.2, 1]])).points == ((639, 10, 1),)  # the pixel it falls in
    Selector.build(points=[[639.6, 10, 1]]).check((640, 480))


def test_a_16_bit_grey_photograph_is_selected_as_its_8_bit_self():
    flower = next(case for case in CASES if case.name == "flower-box")
    grey = np.asarray(flower.image.convert("L"), dtype=np.uint16) * 257
    deep = GrabCutSegmenter().select(Image.fromarray(grey), flower.selector)
    plain = GrabCutSegmenter().select(flower.image.convert("L"), flower.selector)
    assert iou(deep, plain) > 0.95


def test_outside_points_beyond_the_grabcut_crop_are_ignored_not_an_index_error():
    """An outside point far from the object lies past the crop GrabCut works on: it has nothing to say there.
    Before the fix one past the crop was an IndexError (a 500 on every selecting route), one before it wrapped
    around to another pixel. Points on every side of the crop, around a selection with a small hole."""
    from pipelines.masks.grabcut import _keep_selected
    from pipelines.masks.selector import Selector

    crop = (200, 200, 300, 300)
    ring = np.zeros((100, 100), bool)
    ring[20:80, 20:80] = True
    ring[46:48, 46:48] = False  # a small hole: filled, unless an outside point was put in it
    alone = _keep_selected(ring, Selector(points=((230, 230, 1),)), crop)
    assert alone[46, 46]
    for far in ((950, 950, 0), (250, 999, 0), (999, 250, 0), (150, 150, 0), (247, 50, 0), (50, 247, 0)):
        kept = _keep_selected(ring, Selector(points=((230, 230, 1), far)), crop)
        assert np.array_equal(kept, alone), far
    held_open = _keep_selected(ring, Selector(points=((230, 230, 1), (246, 246, 0))), crop)
    assert not held_open[46, 46]  # an outside point inside the crop still keeps its hole open


def test_grabcut_stops_at_its_next_question_once_asked(monkeypatch):
    """A server's selection past its deadline must stop working, not only stop being awaited: GrabCut runs one
    iteration at a time and asks `stop` before each; once it answers yes no further iteration runs."""
    import cv2

    from pipelines.errors import Stopped
    from pipelines.masks.grabcut import grabcut_select

    flower = next(case for case in CASES if case.name == "flower-box")
    ran, real = [], cv2.grabCut
    monkeypatch.setattr(cv2, "grabCut", lambda *args: ran.append(args[5]) or real(*args))
    asked = []

    def stop() -> bool:
        asked.append(True)
        return len(asked) > 3

    with pytest.raises(Stopped):
        grabcut_select(flower.image, flower.selector, stop)
    assert ran == [1, 1, 1]  # three single iterations, then the fourth question said stop
