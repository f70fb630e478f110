"""A made-up 'team mascot' for the teach tests: striped pictures with a red disc, a little
different each time (the disc moves), unlike anything a label's text describes."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def mascot(shift: int = 0, side: int = 96) -> Image.Image:
    image = Image.new("RGB", (side, side), (250, 250, 240))
    draw = ImageDraw.Draw(image)
    for x in range(0, side, 12):
        draw.rectangle((x, 0, x + 5, side), fill=(20, 40, 200))
    draw.ellipse((30 + shift, 30, 66 + shift, 66), fill=(230, 30, 30))
    return image


def mascot_file(folder: Path, shift: int) -> Path:
    out = io.BytesIO()
    mascot(shift).save(out, format="PNG")
    path = folder / f"mascot-{shift}.png"
    path.write_bytes(out.getvalue())
    return path
