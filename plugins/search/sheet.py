"""Contact sheets for search results, and the small previews stored in the index (Pillow only)."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont, ImageOps

CELL = 168
_PAD = 8
_COLUMNS = 5
_BADGE = (88, 101, 242)
WEAK_BADGE = (140, 144, 152)  # a weak match's number: grey instead of blue
PREVIEW_SIDE = 256  # CLIP looks at 224 px, so a re-embedding from the preview sees what it saw
_PREVIEW_MAX = 768


def make_preview(image: Image.Image) -> bytes:
    """A JPEG whose shorter side is at most 256 px (and longer side at most 768): the stored
    thumbnail, shown in contact sheets and re-embedded when the model changes."""
    picture = image.convert("RGB")
    scale = min(1.0, PREVIEW_SIDE / min(picture.size), _PREVIEW_MAX / max(picture.size))
    if scale < 1.0:  # reducing_gap: shrink by whole factors first (fast), then filter the rest
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.BICUBIC, reducing_gap=2.0)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=85)  # no optimize: a second pass for ~5% fewer bytes
    return out.getvalue()


def contact_sheet(thumbnails: list[bytes | None], *, first_number: int = 1, captions: list[str] | None = None,
                  dimmed: list[bool] | None = None) -> bytes:
    """A PNG grid of numbered thumbnails (None draws an empty cell), numbered from `first_number`;
    `captions` are written under each cell's picture (score, "+N similar"), `dimmed` cells (weak
    matches) get a grey number."""
    count = max(1, len(thumbnails))
    columns = min(_COLUMNS, count)
    rows = (count + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (CELL + _PAD) + _PAD, rows * (CELL + _PAD) + _PAD), (246, 247, 249))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=18)
    small = ImageFont.load_default(size=14)
    for i, data in enumerate(thumbnails):
        x = _PAD + (i % columns) * (CELL + _PAD)
        y = _PAD + (i // columns) * (CELL + _PAD)
        draw.rectangle((x, y, x + CELL - 1, y + CELL - 1), fill=(225, 227, 232))
        if data:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    tile = ImageOps.contain(im.convert("RGB"), (CELL, CELL))
                sheet.paste(tile, (x + (CELL - tile.width) // 2, y + (CELL - tile.height) // 2))
            except OSError:  # a damaged preview leaves a grey cell, not a failed search
                pass
        label = str(first_number + i)
        width = draw.textlength(label, font=font)
        badge = WEAK_BADGE if dimmed and dimmed[i] else _BADGE
        draw.rounded_rectangle((x + 4, y + 4, x + 16 + width, y + 30), radius=6, fill=badge)
        draw.text((x + 10, y + 6), label, fill="white", font=font)
        if captions and captions[i]:
            width = draw.textlength(captions[i], font=small)
            draw.rectangle((x, y + CELL - 22, x + width + 12, y + CELL - 1), fill=(32, 34, 37))
            draw.text((x + 6, y + CELL - 20), captions[i], fill="white", font=small)
    out = io.BytesIO()
    sheet.save(out, format="PNG", optimize=True)
    return out.getvalue()
