"""A horizontal bar chart of label probabilities, drawn with Pillow (people look, not read)."""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from plugins.whatis.results import Scored

_WIDTH, _ROW, _PAD, _LABEL_W = 640, 34, 14, 250
_BAR, _TRACK, _TEXT, _MUTED = (88, 101, 242), (232, 234, 240), (30, 31, 34), (110, 112, 120)


def render_chart(labels: Sequence[Scored], *, title: str = "", note: str = "") -> bytes:
    """PNG bytes: one bar per scored label (score in 0..1), best first."""
    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=13)
    header = _ROW if title else 0
    footer = _ROW if note else 0
    height = _PAD * 2 + header + footer + _ROW * max(1, len(labels))
    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    y = _PAD
    if title:
        draw.text((_PAD, y + 6), title, fill=_TEXT, font=font)
        y += header
    bar_x, bar_w = _PAD + _LABEL_W, _WIDTH - _LABEL_W - _PAD * 2 - 64
    for item in labels:
        score = max(0.0, min(1.0, float(item.score)))
        draw.text((_PAD, y + 8), _fit(draw, item.label, font, _LABEL_W - 10), fill=_TEXT, font=font)
        draw.rounded_rectangle((bar_x, y + 6, bar_x + bar_w, y + _ROW - 6), radius=5, fill=_TRACK)
        if score > 0:
            draw.rounded_rectangle((bar_x, y + 6, bar_x + max(10, int(bar_w * score)), y + _ROW - 6),
                                   radius=5, fill=_BAR)
        draw.text((bar_x + bar_w + 8, y + 8), f"{score:.0%}", fill=_TEXT, font=font)
        y += _ROW
    if note:
        draw.text((_PAD, y + 8), note, fill=_MUTED, font=small)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
