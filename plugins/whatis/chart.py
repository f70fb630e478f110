"""A horizontal bar chart of label probabilities, drawn with Pillow (people look, not read).
Labels in any script: `plugins.whatis.fonts` picks a font per character."""

from __future__ import annotations

import io
from typing import Sequence

from PIL import Image, ImageDraw

from plugins.whatis import fonts
from plugins.whatis.results import Scored

_WIDTH, _ROW, _PAD, _LABEL_W = 640, 34, 14, 250
_BAR, _TRACK, _TEXT, _MUTED = (88, 101, 242), (232, 234, 240), (30, 31, 34), (110, 112, 120)
_SIZE, _SMALL = 16, 13


def percent(score: float) -> str:
    """A probability as whole percents; under 1% (but not zero) is "<1%", never a rounded "1%"."""
    return "<1%" if 0 < score < 0.01 else f"{score:.0%}"


def render_chart(labels: Sequence[Scored], *, title: str = "", note: str = "") -> bytes:
    """PNG bytes: one bar per scored label (score in 0..1), best first."""
    header = _ROW if title else 0
    footer = _ROW if note else 0
    height = _PAD * 2 + header + footer + _ROW * max(1, len(labels))
    image = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    y = _PAD
    if title:
        fonts.draw_text(draw, (_PAD, y + 6), fonts.fit(title, _SIZE, _WIDTH - 2 * _PAD), size=_SIZE, fill=_TEXT)
        y += header
    bar_x, bar_w = _PAD + _LABEL_W, _WIDTH - _LABEL_W - _PAD * 2 - 64
    for item in labels:
        score = max(0.0, min(1.0, float(item.score)))
        fonts.draw_text(draw, (_PAD, y + 6), fonts.fit(item.label, _SIZE, _LABEL_W - 10), size=_SIZE, fill=_TEXT,
                        box_width=_LABEL_W - 10)
        draw.rounded_rectangle((bar_x, y + 6, bar_x + bar_w, y + _ROW - 6), radius=5, fill=_TRACK)
        if score > 0:
            draw.rounded_rectangle((bar_x, y + 6, bar_x + max(10, int(bar_w * score)), y + _ROW - 6),
                                   radius=5, fill=_BAR)
        fonts.draw_text(draw, (bar_x + bar_w + 8, y + 6), percent(score), size=_SIZE, fill=_TEXT)
        y += _ROW
    if note:
        fonts.draw_text(draw, (_PAD, y + 8), fonts.fit(note, _SMALL, _WIDTH - 2 * _PAD), size=_SMALL, fill=_MUTED)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
