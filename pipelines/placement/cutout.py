"""Cutting the object out of its image: its alpha channel, else a plain backdrop removed, else GrabCut.

Returns RGBA trimmed to the object; alpha is soft at the edge (a matte, not a hard mask).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

from pipelines.imageops import VISIBLE_ALPHA

BORDER_SHARE = 0.03  # the strip along the border that shows the backdrop, as a share of the short side
PLAIN_SHARE = 0.9  # a backdrop is plain when this share of the border strip sits close to a smooth colour field
GRABCUT_SIDE = 224  # GrabCut runs at this long side (its cost grows with the pixels); the matte is scaled up
GRABCUT_INSET = 0.04  # the centred rectangle GrabCut starts from leaves this share of each side out
MIN_PART = 0.02  # foreground parts smaller than this share of the largest one are specks
DEFRINGE_SIGMA = 2.0  # how far an edge pixel looks for the object's own colour
MIN_MATTE_SIDE = 16  # an image narrower than this has no backdrop to tell apart: the whole of it is the object
SHADOW_SLOPE = 0.035  # a cast shadow's brightness changes by less than this share of the backdrop's per pixel
FIELD_SIDE = 64  # the smooth backdrop field is evaluated at this long side and scaled up (it is a quadratic)
FIT_STRIDE = 4  # every 4th strip pixel is enough to fit the field
PLAIN = np.ones((1, 1), np.float32)  # backdrop_matte's answer for an image that is all backdrop


def cut_out(image: Image.Image) -> Image.Image:
    """The object on a transparent background, trimmed to its alpha's box."""
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.min() < 250:  # the caller cut it out already
        return _trim(rgba)
    if min(rgba.size) < MIN_MATTE_SIDE:
        return rgba
    rgb = np.asarray(rgba.convert("RGB"), dtype=np.float32)
    matte = backdrop_matte(rgb)
    if matte is None:
        matte = grabcut_matte(rgb)
    elif matte is PLAIN:  # nothing on the backdrop: the image is a swatch, and all of it is the object
        return rgba
    clean = defringe(rgb, matte)
    rgba = Image.fromarray(np.clip(np.rint(clean), 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    rgba.putalpha(Image.fromarray(np.clip(matte * 255.0 + 0.5, 0, 255).astype(np.uint8), "L"))
    return _trim(rgba)


def defringe(rgb: np.ndarray, matte: np.ndarray) -> np.ndarray:
    """Edge pixels (partly transparent) carry some of the old backdrop's colour, which would show as a halo in
    the new scene: their colour is replaced by that of the opaque pixels nearby."""
    solid = (matte > 0.97).astype(np.float32)
    edge = (matte > 0.0) & (matte <= 0.97)
    if not edge.any() or not solid.any():
        return rgb
    near = cv2.GaussianBlur(rgb * solid[..., None], (0, 0), DEFRINGE_SIGMA)
    weight = cv2.GaussianBlur(solid, (0, 0), DEFRINGE_SIGMA)
    inside_colour = near / np.maximum(weight, 1e-6)[..., None]
    return np.where((edge & (weight > 1e-3))[..., None], inside_colour, rgb)


def backdrop_matte(rgb: np.ndarray) -> np.ndarray | None:
    """Alpha in [0, 1] when the image's border is a plain backdrop (flat or a smooth gradient), else None;
    PLAIN when the whole image is backdrop (a swatch: nothing to cut out, GrabCut would split it at random).

    The backdrop is modelled as a quadratic colour field fitted to the border strip. Pixels close to it and
    connected to the border are backdrop, and so is a shadow cast on it: the backdrop's colour in shade that
    fades in smoothly (a product's own edge is a sharp step, which stops the shadow there, so a grey product
    on a white backdrop keeps its body). Holes inside the object that happen to match the backdrop stay opaque.
    """
    height, width = rgb.shape[:2]
    smooth = cv2.GaussianBlur(rgb, (0, 0), 1.0)
    strip = _border_strip(height, width)
    field = _fit_field(smooth, strip)
    distance = _norm(smooth - field)
    noise = float(np.percentile(distance[strip], 90))
    low = max(8.0, 2.5 * noise)
    if np.mean(distance[strip] < low) < PLAIN_SHARE:
        return None
    high = 3.0 * low
    background = _connected_to_border((distance < low) | _soft_shadow(smooth, field, low))
    if background.all():
        return PLAIN
    foreground = _without_specks(~background)
    soft = np.clip((distance - low) / (high - low), 0.0, 1.0)
    solid = foreground.astype(np.uint8)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    edge = (cv2.dilate(solid, cross, iterations=2) > 0) & ~(cv2.erode(solid, cross, iterations=2) > 0)
    return np.where(edge, np.maximum(soft, foreground * 0.5), foreground.astype(np.float32)).astype(np.float32)


def grabcut_matte(rgb: np.ndarray) -> np.ndarray:
    """Alpha from OpenCV GrabCut started on a centred rectangle, at a working size, feathered by a pixel."""
    height, width = rgb.shape[:2]
    scale = min(1.0, GRABCUT_SIDE / max(height, width))
    small = cv2.resize(
        rgb.astype(np.uint8),
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    )
    sh, sw = small.shape[:2]
    inset_x, inset_y = max(1, round(sw * GRABCUT_INSET)), max(1, round(sh * GRABCUT_INSET))
    rect = (inset_x, inset_y, max(1, sw - 2 * inset_x), max(1, sh - 2 * inset_y))
    labels = np.zeros((sh, sw), np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(
            np.ascontiguousarray(small[..., ::-1]), labels, rect, background, foreground, 5, cv2.GC_INIT_WITH_RECT
        )
    except cv2.error:  # too few pixels on one side of the rectangle to model a colour: keep the whole image
        return np.ones((height, width), np.float32)
    chosen = _without_specks(np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)))
    if not chosen.any():  # GrabCut found nothing to separate: the whole image is the object
        return np.ones((height, width), np.float32)
    full = cv2.resize(chosen.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(cv2.GaussianBlur(full, (0, 0), max(0.8, 0.5 / scale)), 0.0, 1.0)


def _border_strip(height: int, width: int) -> np.ndarray:
    band = max(2, round(BORDER_SHARE * min(height, width)))
    strip = np.zeros((height, width), bool)
    strip[:band], strip[-band:], strip[:, :band], strip[:, -band:] = True, True, True, True
    return strip


def _fit_field(rgb: np.ndarray, strip: np.ndarray) -> np.ndarray:
    """Each channel as a quadratic in (x, y), least-squares fitted to the border strip.

    Fitted on the strip's pixels, evaluated on a FIELD_SIDE grid and scaled up bilinearly: a quadratic is smooth
    enough that this differs from the exact field by far less than a grey level, at a fraction of the work."""
    height, width = strip.shape
    ys, xs = np.nonzero(strip)
    ys, xs = ys[::FIT_STRIDE], xs[::FIT_STRIDE]  # a quadratic needs far fewer samples than the strip holds
    coefficients, *_ = np.linalg.lstsq(_quadratic_basis(xs, ys, width, height), rgb[ys, xs], rcond=None)
    grid_w, grid_h = min(width, FIELD_SIDE), min(height, FIELD_SIDE)
    # Grid points at the pixel centres bilinear scaling maps them to, so the scaled field is the quadratic.
    gx = (np.arange(grid_w, dtype=np.float32) + 0.5) * (width / grid_w) - 0.5
    gy = (np.arange(grid_h, dtype=np.float32) + 0.5) * (height / grid_h) - 0.5
    grid_x, grid_y = np.meshgrid(gx, gy)
    small = (_quadratic_basis(grid_x, grid_y, width, height) @ coefficients).astype(np.float32)
    if (grid_w, grid_h) == (width, height):
        return small
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _quadratic_basis(xs: np.ndarray, ys: np.ndarray, width: int, height: int) -> np.ndarray:
    xs = np.asarray(xs, np.float32) / max(1, width - 1) - 0.5
    ys = np.asarray(ys, np.float32) / max(1, height - 1) - 0.5
    return np.stack([np.ones_like(xs), xs, ys, xs * xs, ys * ys, xs * ys], axis=-1)


def _soft_shadow(rgb: np.ndarray, field: np.ndarray, tolerance: float) -> np.ndarray:
    """The backdrop's colour at 30-100 % of its brightness, where brightness changes only gently."""
    brightness, field_brightness = _brightness(rgb), _brightness(field)
    ratio = brightness / field_brightness
    # The chroma gap, scaled to the backdrop's brightness: |rgb / b - field / fb| * fb.
    chroma_gap = _norm(rgb * (1.0 / ratio)[..., None] - field)
    gentle = _gradient(cv2.GaussianBlur(brightness, (0, 0), 2.0)) < SHADOW_SLOPE * field_brightness
    return (chroma_gap < tolerance) & (ratio > 0.3) & (ratio < 1.0) & gentle


def _brightness(rgb: np.ndarray) -> np.ndarray:
    return cv2.transform(rgb, np.full((1, 3), 1.0 / 3.0, np.float32)) + np.float32(1.0)


def _norm(vectors: np.ndarray) -> np.ndarray:
    """The length of each pixel's 3-vector (np.linalg.norm over the last axis, without its temporaries)."""
    return np.sqrt(np.einsum("ijk,ijk->ij", vectors, vectors))


def _gradient(image: np.ndarray) -> np.ndarray:
    """Central differences (np.gradient's inside the image), as one magnitude."""
    dx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=1, scale=0.5)
    dy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=1, scale=0.5)
    return cv2.magnitude(dx, dy)


def _connected_to_border(region: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(region)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def _without_specks(region: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(region)
    if count <= 1:
        return region
    sizes = ndimage.sum(region, labels, index=np.arange(1, count + 1))
    keep = np.flatnonzero(sizes >= MIN_PART * sizes.max()) + 1
    return np.isin(labels, keep)


def _trim(rgba: Image.Image) -> Image.Image:
    box = rgba.getchannel("A").point(lambda value: 255 if value > VISIBLE_ALPHA else 0).getbbox()
    return rgba.crop(box) if box else rgba
