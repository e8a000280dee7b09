"""`segswap eval`: the measures mean what they say, and the composite engine meets every threshold on the suite."""

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from pipelines import CompositeEngine
from pipelines.evaluation import metrics
from pipelines.evaluation.selection import load_selections
from pipelines.evaluation.suite import evaluate, load_suite, measure
from pipelines.imageops import LUMA, grow_mask, normalize_mask
from pipelines.job import build_job
from pipelines.masks import GrabCutSegmenter
from pipelines.placement import resolve_mode


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate(
        CompositeEngine(), load_suite(), out, segmenter=GrabCutSegmenter(), selections=load_selections()
    ), out


def test_the_composite_engine_meets_every_threshold_on_the_suite(report):
    result, _ = report
    failures = {row["case"]: row["measures"] for row in result["cases"] if not row["passed"]}
    assert result["passed"], failures
    checked = {name for row in result["cases"] for name in row["measures"]}
    checked |= {"box_iou"} if result["selection"] else set()
    assert checked == set(metrics.THRESHOLDS)  # every measure is exercised by some case


def test_eval_measures_box_selection_against_true_outlines(report):
    result, out = report
    rows = {row["case"]: row for row in result["selection"]}
    assert set(rows) == {case.name for case in load_selections()} and len(rows) >= 4
    assert all(row["segmenter"] == "grabcut" and row["box_iou"]["passed"] for row in rows.values()), rows
    assert all(row["box_iou"]["value"] > row["ellipse_iou"] for row in rows.values()), rows  # the box's own ellipse
    assert all((out / f"select-{name}.png").is_file() for name in rows)


def cheats(case, job) -> dict[str, Image.Image]:
    """Outputs that fake a swap over the grown mask: a flat colour (the object's mean, or the erased region's), the
    same lit by 15 % of the scene's shading, noise, and the input unchanged."""
    original = np.asarray(case.main, dtype=np.float64)
    mask = normalize_mask(case.mask, case.main.size)
    grown = grow_mask(mask, job.growmask)
    surface = np.asarray(case.object.convert("RGB")).reshape(-1, 3) if case.object else original[mask]
    colour = surface.mean(axis=0)
    light = cv2.GaussianBlur(original @ LUMA, (0, 0), 6.0)
    light = 1 + 0.15 * (light / np.median(light[mask]) - 1)
    outputs = {name: original.copy() for name in ("flat colour", "faded shading", "noise", "unchanged")}
    outputs["flat colour"][grown] = colour
    outputs["faded shading"][grown] = colour * light[grown][:, None]
    outputs["noise"][grown] = np.random.default_rng(0).integers(0, 256, (int(grown.sum()), 3))
    return {name: Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8)) for name, out in outputs.items()}


@pytest.fixture(scope="module")
def cheat_verdicts() -> dict[tuple[str, str, str], dict]:
    """(case kind, case, cheat) -> the measures that cheat got on that case."""
    verdicts = {}
    for case in load_suite():
        job = build_job(case.values, {"main_image": case.main, "mask_image": case.mask, "object_image": case.object})
        for name, output in cheats(case, job).items():
            verdicts[resolve_mode(job), case.name, name] = measure(case, job, output)
    return verdicts


def test_a_flat_colour_noise_or_the_unchanged_image_fails_every_pattern_and_object_case(cheat_verdicts):
    passed = {
        key: {name: row["value"] for name, row in measures.items()}
        for key, measures in cheat_verdicts.items()
        if key[0] in ("pattern", "object") and all(row["passed"] for row in measures.values())
    }
    assert not passed, passed
    assert {kind for kind, _, _ in cheat_verdicts} == {"pattern", "object", "erase"}


def test_no_cheat_passes_the_erase_cases(cheat_verdicts):
    """An erase over plain ground (a patch of wall, the fur between the eyes) is one the unchanged image does well,
    and a flat colour is a fair fill of a clear sky: each cheat fails some erase case, not necessarily all."""
    for cheat in ("flat colour", "faded shading", "noise", "unchanged"):
        verdicts = [m for (kind, _, name), m in cheat_verdicts.items() if kind == "erase" and name == cheat]
        assert verdicts and not all(all(row["passed"] for row in m.values()) for m in verdicts), cheat


def test_pattern_structure_and_shading_depth_tell_the_pattern_under_the_light_from_its_mean_colour(cheat_verdicts):
    for (kind, case, cheat), measures in cheat_verdicts.items():
        if kind == "pattern" and cheat in ("flat colour", "faded shading", "noise"):
            assert measures["pattern_structure"]["value"] < 0.1, (case, cheat)
        if kind == "pattern" and cheat == "faded shading":
            assert measures["shading_depth"]["value"] < 0.25, case  # correlation alone (shading_kept) may pass it
        if kind == "object":
            assert measures["object_structure"]["value"] < 0.35, (case, cheat)


def test_iou_means_what_it_says():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5], b[:, 2:6] = True, True
    assert metrics.iou(a, b) == pytest.approx(30 / 60) and metrics.iou(a, a) == 1.0


def test_eval_writes_the_report_the_sheet_and_each_output(report):
    result, out = report
    assert json.loads((out / "report.json").read_text())["cases"] == result["cases"]
    from PIL import Image

    sheet = Image.open(out / "sheet.png")
    assert sheet.width >= 4 * 256 and sheet.height >= len(result["cases"]) * 256
    for row in result["cases"]:
        assert (out / f"{row['case']}.png").is_file()
    assert "skipped" in result["object_similarity"]


def scene_and_mask():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:120, 0:160]
    original = np.stack([100 + 80 * np.sin(xs / 10.0)] * 3, axis=-1) + rng.normal(0, 2, (120, 160, 3))
    mask = np.zeros((120, 160), bool)
    mask[15:105, 20:140] = True
    return np.clip(original, 0, 255).astype(np.uint8), mask


def test_a_flat_paste_loses_the_shading_and_a_shaded_one_keeps_it():
    original, mask = scene_and_mask()
    flat = original.copy()
    flat[mask] = (20, 60, 200)
    shaded = original.copy()
    shaded[mask] = (original[mask].astype(float) / 180 * np.array([20, 60, 200])).astype(np.uint8)
    assert metrics.shading_kept(flat, original, mask) < 0.2
    assert metrics.shading_kept(shaded, original, mask) > 0.9
    assert metrics.pattern_coverage(flat, original, mask) == 1.0
    assert metrics.pattern_coverage(original, original, mask) == 0.0
    half = original.copy()
    half[:, :80][mask[:, :80]] = (20, 60, 200)
    assert metrics.pattern_coverage(half, original, mask) == pytest.approx(0.5)


def test_shading_depth_is_the_share_of_the_folds_depth_whatever_the_colour():
    original, mask = scene_and_mask()
    light = original.astype(float) @ LUMA / 100
    for depth in (1.0, 0.15):
        lit = original.copy()
        lit[mask] = np.clip(np.array([20, 60, 200]) * (light[mask] ** depth)[:, None], 0, 255)
        assert metrics.shading_depth(lit, original, mask) == pytest.approx(depth, abs=0.05)
    flat = original.copy()
    flat[mask] = (20, 60, 200)
    assert metrics.shading_depth(flat, original, mask) == pytest.approx(0.0, abs=1e-6)
    assert metrics.shading_depth(original, original, mask) == pytest.approx(1.0)


def test_structure_carried_sees_the_pattern_through_light_and_colour_and_nothing_in_its_mean_colour():
    original, mask = scene_and_mask()
    ys, xs = np.mgrid[0:120, 0:160]
    stripes = np.where((xs // 6) % 2 == 0, 1.0, 0.0)[..., None] * np.array([200.0, 30.0, 30.0]) + 20  # red on dark
    hue_only = np.where((xs // 6) % 2 == 0, 1.0, 0.0)[..., None] * np.array([120.0, -120.0, 0.0]) + [20, 140, 60]
    for pattern in (stripes, hue_only):
        lit = original.copy()
        lit[mask] = np.clip(0.6 * pattern[mask] * (original[mask].astype(float) / 180) + 30, 0, 255)
        assert metrics.passes("pattern_structure", metrics.structure_carried(lit, pattern, mask))  # light 0.1-1
        flat = original.copy()
        flat[mask] = pattern[mask].mean(axis=0)
        assert metrics.structure_carried(flat, pattern, mask) == pytest.approx(0.0, abs=1e-6)
        noise = np.random.default_rng(1).integers(0, 256, original.shape).astype(np.uint8)
        assert abs(metrics.structure_carried(noise, pattern, mask)) < 0.1
        assert abs(metrics.structure_carried(original, pattern, mask)) < 0.2


def test_colour_carried_is_one_at_the_pattern_mean_and_zero_at_the_original():
    original, mask = scene_and_mask()
    pattern = np.full((4, 4, 3), (20, 60, 200), np.uint8)
    taken = original.copy()
    taken[mask] = (20, 60, 200)
    assert metrics.pattern_colour_carried(taken, original, mask, pattern) == pytest.approx(1.0)
    assert metrics.pattern_colour_carried(original, original, mask, pattern) == pytest.approx(0.0)


def test_a_flat_backdrop_counts_as_a_leak_and_outside_changes_are_counted():
    original, mask = scene_and_mask()
    leaked = original.copy()
    leaked[mask] = 250
    white = np.full((20, 20, 3), 250, np.uint8)
    white[5:15, 5:15] = (200, 40, 30)  # a product shot on white
    assert metrics.backdrop_leak(leaked, mask, metrics.backdrop_colour(white)) == 1.0
    assert metrics.backdrop_leak(original, mask, metrics.backdrop_colour(white)) < 0.2
    night = original.copy()
    night[mask] = 5  # the scene's own black ground behind the object: no leak of the white
    assert metrics.backdrop_leak(night, mask, metrics.backdrop_colour(white)) == 0.0
    assert metrics.backdrop_leak(leaked, mask) == 1.0  # backdrop unknown: the most common colour
    leaked[0, 0] = 0
    assert metrics.outside_changed(leaked, original, mask) == 1


def test_object_similarity_runs_on_an_installed_image_encoder(tiny_weights):
    pytest.importorskip("transformers")
    from PIL import Image

    from pipelines.evaluation.similarity import clip_similarity

    similarity = clip_similarity(tiny_weights)
    image = Image.new("RGB", (40, 30), (200, 30, 30))
    assert similarity(image, image) == pytest.approx(1.0, abs=1e-4)
    assert -1.0 <= similarity(image, Image.new("RGB", (30, 30), (10, 10, 240))) <= 1.0
    assert clip_similarity(tiny_weights / "nothing-here") is None


def test_object_similarity_skips_flux2_sets_which_have_no_image_encoder(tiny_weights, tiny_flux2_weights, tmp_path):
    from PIL import Image

    from pipelines.evaluation.similarity import clip_similarity

    assert clip_similarity(tiny_flux2_weights) is None
    assert clip_similarity(tiny_flux2_weights / "flux2-klein") is None
    for folder in (*tiny_flux2_weights.iterdir(), tiny_weights / "sd15"):
        (tmp_path / folder.name).symlink_to(folder)
    image = Image.new("RGB", (30, 30), (200, 30, 30))
    assert clip_similarity(tmp_path)(image, image) == pytest.approx(1.0, abs=1e-4)


def disc_on_scene(body: float, scene: float, ring: float | None = None, ring_width: int = 2):
    """A grey disc (its alpha as coverage) on a grainy grey scene, with a line of `ring` just inside its outline
    (where a matte that took the backdrop's mixed pixels for object puts it)."""
    rng = np.random.default_rng(3)
    ys, xs = np.mgrid[0:160, 0:200]
    distance = np.hypot(xs - 100, ys - 80)
    coverage = np.clip(50.5 - distance, 0.0, 1.0)  # anti-aliased, radius 50
    grey = np.where(distance <= 50, body, scene) + rng.normal(0, 3, distance.shape)
    if ring is not None:
        grey[(distance > 50 - ring_width) & (distance <= 50)] = ring
    return np.clip(np.repeat(grey[..., None], 3, axis=2), 0, 255).astype(np.uint8), coverage


def test_edge_fringe_flags_a_line_of_the_backdrops_colour_and_nothing_else():
    clean, coverage = disc_on_scene(body=90, scene=30)
    assert metrics.edge_fringe(clean, coverage, backdrop=250.0) < 3
    white_object, _ = disc_on_scene(body=240, scene=30)  # light to its edge: the object's own colour
    assert metrics.edge_fringe(white_object, coverage, backdrop=250.0) < 3
    fringed, _ = disc_on_scene(body=90, scene=30, ring=200)
    assert metrics.edge_fringe(fringed, coverage, backdrop=250.0) > 80
    assert metrics.edge_fringe(fringed, coverage, backdrop=None) > 80  # unknown backdrop: both ways
    assert metrics.edge_fringe(fringed, coverage, backdrop=5.0) < 1  # a black backdrop leaves no light line
    dark_fringe, _ = disc_on_scene(body=90, scene=215, ring=15)
    assert metrics.edge_fringe(dark_fringe, coverage, backdrop=5.0) > 50


def test_the_backdrop_is_the_object_images_frame_unless_it_was_cut_out_already():
    photo = np.full((40, 50, 3), 245, np.uint8)
    photo[10:30, 10:40] = (150, 60, 40)
    assert metrics.backdrop_brightness(photo) == pytest.approx(245, abs=1)
    cut = np.concatenate([photo, np.zeros((40, 50, 1), np.uint8)], axis=2)
    cut[10:30, 10:40, 3] = 255
    assert metrics.backdrop_brightness(cut) is None


def test_inclusion_contrast_flags_a_pale_patch_over_a_badge_and_not_the_pattern_running_through():
    ys, xs = np.mgrid[0:120, 0:160]
    checks = np.where(((xs // 8) + (ys // 8)) % 2 == 0, 60.0, 140.0)  # a pattern of 8 px checks
    mask = np.zeros((120, 160), bool)
    mask[10:110, 10:150] = True
    badge = np.zeros_like(mask)
    badge[48:72, 60:100] = True
    through = np.repeat(checks[..., None], 3, axis=2).astype(np.uint8)
    pale = through.copy()
    pale[badge] = (255 - (255 - pale[badge]) / 2.5).astype(np.uint8)  # lit by the badge's own brightness
    assert metrics.inclusion_contrast(through, mask, badge) < 5
    assert metrics.inclusion_contrast(pale, mask, badge) > 40


def test_the_sheets_measure_lines_stay_within_the_sheet():
    from PIL import ImageDraw, ImageFont

    from pipelines.evaluation.sheet import _wrapped

    draw, font = ImageDraw.Draw(Image.new("RGB", (8, 8))), ImageFont.load_default(size=15)
    items = [f"measure_number_{index} 0.{index:03d}" for index in range(12)]
    lines = _wrapped(draw, font, items, 1040)
    assert len(lines) > 1 and all(draw.textlength(line, font=font) <= 1040 for line in lines)
    assert "   ".join(lines) == "   ".join(items)  # every measure once, in order
