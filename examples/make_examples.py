"""Write the sample inputs used by the README: a room, its mask (also as an RGBA edit mask) and a table, a garment
and a pattern.

    python examples/make_examples.py [OUT_DIR]     (default: examples/)

Drawn procedurally so the repository carries no binary files.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

ROOM_SIZE = (768, 512)


def room() -> Image.Image:
    image = Image.new("RGB", ROOM_SIZE)
    draw = ImageDraw.Draw(image)
    for y in range(330):  # wall with a warm vertical gradient
        draw.line([(0, y), (ROOM_SIZE[0], y)], fill=(226 - y // 12, 214 - y // 10, 190 - y // 8))
    for y in range(330, ROOM_SIZE[1]):  # wooden floor boards
        shade = 150 - (y - 330) // 6
        draw.line([(0, y), (ROOM_SIZE[0], y)], fill=(shade, shade * 3 // 4, shade // 2))
    for x in range(0, ROOM_SIZE[0], 64):
        draw.line([(x, 330), (x - 40, ROOM_SIZE[1])], fill=(96, 70, 44), width=2)
    draw.rectangle((520, 70, 690, 230), fill=(150, 190, 225), outline=(250, 250, 245), width=8)  # window
    draw.rectangle((40, 220, 250, 360), fill=(70, 90, 120))  # sofa
    draw.rectangle((40, 190, 250, 240), fill=(60, 80, 108))
    draw.ellipse((300, 330, 470, 420), fill=(120, 60, 50))  # old round rug: the region to replace
    return image.filter(ImageFilter.SMOOTH)


def room_mask() -> Image.Image:
    mask = Image.new("L", ROOM_SIZE, 0)
    ImageDraw.Draw(mask).rectangle((290, 250, 480, 430), fill=255)
    return mask


def room_mask_rgba() -> Image.Image:
    """The same region in OpenAI's mask convention (/v1/images/edits): transparent means edit."""
    image = Image.new("RGBA", ROOM_SIZE, (0, 0, 0, 255))
    image.putalpha(room_mask().point(lambda value: 255 - value))
    return image


def table() -> Image.Image:
    """A cut-out wooden table on a transparent background, like a product shot."""
    image = Image.new("RGBA", (300, 220), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.polygon([(20, 40), (280, 40), (300, 70), (0, 70)], fill=(139, 94, 60, 255))  # top
    draw.rectangle((0, 70, 300, 84), fill=(110, 72, 44, 255))
    for x in (18, 262):
        draw.rectangle((x, 84, x + 20, 218), fill=(100, 64, 38, 255))  # legs
    for y in range(44, 70, 5):
        draw.line([(20, y), (280, y)], fill=(160, 112, 74, 255))  # grain
    return image


def garment() -> Image.Image:
    image = Image.new("RGB", (512, 640), (235, 235, 232))
    draw = ImageDraw.Draw(image)
    draw.ellipse((206, 40, 306, 150), fill=(224, 188, 160))  # head
    draw.polygon([(150, 170), (362, 170), (400, 420), (112, 420)], fill=(200, 200, 205))  # plain shirt
    draw.rectangle((150, 420, 362, 620), fill=(50, 60, 90))  # trousers
    return image


def garment_mask() -> Image.Image:
    mask = Image.new("L", (512, 640), 0)
    ImageDraw.Draw(mask).polygon([(150, 170), (362, 170), (400, 420), (112, 420)], fill=255)
    return mask


def pattern() -> Image.Image:
    """One tile of a checked fabric: meant to be repeated (horizontal_repeat/vertical_repeat)."""
    image = Image.new("RGB", (64, 64), (180, 30, 40))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 24, 63, 39), fill=(240, 220, 200))
    draw.rectangle((24, 0, 39, 63), fill=(240, 220, 200))
    draw.rectangle((24, 24, 39, 39), fill=(40, 40, 60))
    return image


SAMPLES = {
    "room.png": room,
    "room_mask.png": room_mask,
    "room_mask_rgba.png": room_mask_rgba,
    "table.png": table,
    "garment.png": garment,
    "garment_mask.png": garment_mask,
    "pattern.png": pattern,
}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, draw in SAMPLES.items():
        draw().save(out_dir / name)
    print(f"wrote {len(SAMPLES)} sample images to {out_dir}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
