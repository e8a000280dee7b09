"""Encoding the output image in the format the request asked for."""

from __future__ import annotations

import io

from PIL import Image

from server.errors import BadRequest
from server.inputs.metadata import save_options, segswap_version
from server.inputs.provenance import provenance_for

# zlib level 1: a 1024x1024 PNG encodes several times faster than at Pillow's
# default of 6 for a file only slightly larger; PNG stays lossless either way.
PNG_COMPRESS_LEVEL = 1
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
MAX_SIDE = {"webp": 16383, "jpeg": 65500}  # what the formats can hold; PNG has no practical limit


def encode_image(image: Image.Image, image_format: str, quality: int, record: dict | None = None) -> bytes:
    """The image in `image_format`, carrying `record` (what made it, server/inputs/metadata.py) when given."""
    buffer = io.BytesIO()
    extra = save_options(image_format, record)
    if image_format == "png":
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL, **extra)
    elif image_format == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=quality, **extra)
    elif image_format == "webp":
        image.save(buffer, "WEBP", quality=quality, **extra)
    else:
        raise ValueError(f"unknown image format {image_format!r}")
    return buffer.getvalue()


def encode_output(image: Image.Image, image_format: str, quality: int, record: dict | None, settings) -> bytes:
    """An output as it is delivered: its record inside, and the operator's provenance marks (watermark, C2PA
    credentials) where configured (server/inputs/provenance.py). The record says what became of the watermark:
    a lossy encode below the quality it survives leaves it unreliable, and the reader must know."""
    marks = provenance_for(settings)
    note = marks.watermark_note(image.size, image_format, quality)
    if record is not None and note is not None:
        record = {**record, "watermark": note}
    data = encode_image(marks.mark_pixels(image), image_format, quality, record)
    return marks.sign(data, image_format, segswap_version())


def check_encodable(size: tuple[int, int], image_format: str) -> None:
    """Refuse, before any work, an output the format cannot hold (the output has the main image's size)."""
    limit = MAX_SIDE.get(image_format)
    if limit is not None and max(size) > limit:
        raise BadRequest(
            f"field 'image_format': {image_format} images can be at most {limit} pixels a side and the main image "
            f"is {size[0]}x{size[1]}; ask for png"
        )
