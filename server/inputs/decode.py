"""Turning an image field (URL, base64, data URI, uploaded bytes) into a decoded PIL image."""

from __future__ import annotations

import base64
import binascii
import io
import re

import pybase64
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.imageops import high_depth_to_l, is_high_depth
from server.errors import BadRequest, ServiceError, TooLarge
from server.inputs.metadata import digest

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP"}
ORIENTATION = 0x0112  # the EXIF tag
ROTATING = {5, 6, 7, 8}  # EXIF orientations that turn the picture a quarter (its width and height swap)
# One pixel limit, the configured one (max_image_pixels, checked on the header before decoding): Pillow's
# own bomb check (a warning at 89.5 MP, an error at twice that) would refuse images the operator allowed.
Image.MAX_IMAGE_PIXELS = None
DATA_URI = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,", re.IGNORECASE)


def is_url(value: str) -> bool:
    return value[:8].lower().startswith(("http://", "https://"))


def decode_base64_field(value: str, field: str) -> bytes:
    """Raw base64 or a data:image/...;base64, URI -> bytes."""
    payload = DATA_URI.sub("", value.strip(), count=1)
    if payload.startswith("data:"):
        raise BadRequest(f"field '{field}': only base64 data URIs of images are accepted", field=field)
    try:
        return pybase64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        pass
    try:  # what the fast decoder refuses, the standard library's lenient reading may still take (whitespace,
        # line breaks, excess padding): the rare case pays for it
        data = re.sub(r"\s+", "", payload)
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"field '{field}': not a URL and not valid base64", field=field) from None


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Bytes -> a loaded PIL image, EXIF orientation applied, first frame of an animation.

    The pixel limit is checked on the header, before any pixel is decoded.
    """
    if not data:
        raise BadRequest(f"field '{field}': the image is empty", field=field)
    try:
        image = Image.open(io.BytesIO(data))
        _check_header(image, field, max_pixels)
        image.load()
        orientation = image.getexif().get(ORIENTATION, 1)
        upright = _normalise_mode(ImageOps.exif_transpose(image))
        upright.info["orientation"] = orientation  # what was turned, for a mask drawn on the unturned pixels
        return upright
    except ServiceError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise BadRequest(f"field '{field}': the data is not a readable PNG, JPEG or WEBP image", field=field) from None


def _check_header(image: Image.Image, field: str, max_pixels: int) -> None:
    if image.format not in ALLOWED_FORMATS:
        raise BadRequest(
            f"field '{field}': {image.format or 'this'} images are not accepted; use PNG, JPEG or WEBP", field=field
        )
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(f"field '{field}': the image is {width}x{height}, more than {max_pixels} pixels", field=field)


def _normalise_mode(image: Image.Image) -> Image.Image:
    """Keep alpha where there is some (masks, cut-out objects); everything else becomes RGB or L."""
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if is_high_depth(image):
        return high_depth_to_l(image)
    if image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, 1


def decode_inputs(data: dict[str, bytes], max_pixels: int) -> dict[str, Image.Image]:
    """A request's images, decoded; a mask drawn on an EXIF-turned main image's stored pixels is turned the
    same way (see align_mask). A request that selects its region by box, points or words sends no mask."""
    images = {field: decode_image(value, field, max_pixels) for field, value in data.items()}
    if "mask_image" in images:
        images["mask_image"] = align_mask(images["main_image"], images["mask_image"])
    for field, value in data.items():  # what the output's record names each input by (server/inputs/metadata.py)
        images[field].info["sha256"] = digest(value)
    return images


def align_mask(main: Image.Image, mask: Image.Image) -> Image.Image:
    """A mask the size of the main image as stored, before its EXIF quarter turn, gets the same turn.

    Any other size is left to the engine: the same aspect ratio is scaled, anything else is refused.
    """
    orientation = main.info.get("orientation", 1)
    stored_size = (main.height, main.width)
    if mask.size == main.size or orientation not in ROTATING or mask.size != stored_size:
        return mask
    turned = mask.copy()
    turned.getexif()[ORIENTATION] = orientation
    return ImageOps.exif_transpose(turned)
