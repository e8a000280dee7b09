"""The contact sheet: one row per case (scene, mask, object, output), labelled with its measures; an erase's
object cell says so."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipelines.imageops import normalize_mask

CELL = 256  # each picture is fitted in a CELL x CELL square
LABEL = 86  # height of the text band above each row: the title and up to three lines of measures
LINE = 20
GAP = 8
BACKGROUND, INK, GOOD, BAD = (250, 250, 248), (30, 30, 30), (20, 120, 40), (180, 30, 30)
NO_OBJECT = Image.new("RGB", (CELL, CELL), BACKGROUND)
ImageDraw.Draw(NO_OBJECT).text((CELL // 2, CELL // 2), "erase: no object", fill=INK, anchor="mm")


def contact_sheet(cases, outputs: list[Image.Image], rows: list[dict]) -> Image.Image:
    columns = 4
    width = columns * (CELL + GAP) + GAP
    height = len(cases) * (CELL + LABEL + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for index, (case, output, row) in enumerate(zip(cases, outputs, rows, strict=True)):
        top = GAP + index * (CELL + LABEL + GAP)
        _label(draw, font, (GAP, top), case.name, row, width - 2 * GAP)
        pictures = [case.main, _mask_overlay(case.main, case.mask), case.object or NO_OBJECT, output]
        for column, picture in enumerate(pictures):
            paste_fitted(sheet, picture, (GAP + column * (CELL + GAP), top + LABEL))
    return sheet


def _label(draw: ImageDraw.ImageDraw, font, origin: tuple[int, int], name: str, row: dict, width: int) -> None:
    x, y = origin
    verdict = "pass" if row["passed"] else "FAIL"
    draw.text(
        (x, y),
        f"{name}  ({row['engine']}, {row['seconds']:.2f} s): {verdict}  |  scene, mask, object, output",
        fill=GOOD if row["passed"] else BAD,
        font=font,
    )
    measures = [f"{key} {entry['value']}{'' if entry['passed'] else ' (!)'}" for key, entry in row["measures"].items()]
    if "object_similarity" in row:
        measures.append(f"object_similarity {row['object_similarity']}")
    for number, line in enumerate(_wrapped(draw, font, measures, width)):
        draw.text((x, y + 22 + number * LINE), line, fill=INK, font=font)


def _wrapped(draw: ImageDraw.ImageDraw, font, items: list[str], width: int) -> list[str]:
    """`items` joined into lines no wider than `width` pixels (an item is never split)."""
    lines: list[str] = []
    for item in items:
        joined = f"{lines[-1]}   {item}" if lines else item
        if lines and draw.textlength(joined, font=font) <= width:
            lines[-1] = joined
        else:
            lines.append(item)
    return lines


def _mask_overlay(main: Image.Image, mask: Image.Image) -> Image.Image:
    selected = normalize_mask(mask, main.size)
    pixels = np.asarray(main.convert("RGB"), dtype=np.float32)
    pixels[selected] = 0.45 * pixels[selected] + 0.55 * np.array([40, 220, 90], np.float32)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def paste_fitted(sheet: Image.Image, picture: Image.Image, origin: tuple[int, int], cell: int = CELL) -> None:
    """`picture` scaled to fit a cell x cell square at `origin`, centred; transparency shown on light grey."""
    picture = picture.convert("RGBA")
    scale = min(cell / picture.width, cell / picture.height)
    fitted = picture.resize(
        (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.Resampling.LANCZOS
    )
    checker = Image.new("RGB", fitted.size, (225, 225, 225))
    checker.paste(fitted, mask=fitted.getchannel("A"))
    sheet.paste(checker, (origin[0] + (cell - fitted.width) // 2, origin[1] + (cell - fitted.height) // 2))
