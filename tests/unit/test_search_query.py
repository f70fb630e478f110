"""Reading /search queries (weights, filters, dates) and drawing contact sheets: light, no model."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest
from PIL import Image

from engine.errors import UserError
from plugins.search.query import NEGATIVE_WEIGHT, parse_query
from plugins.search.sheet import PREVIEW_SIDE, contact_sheet, make_preview

NOW = datetime(2024, 5, 15, 13, 30, tzinfo=timezone.utc)  # a Wednesday


def day(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()


def test_weighted_terms():
    q = parse_query('beach +sunset -people -"red car"', now=NOW)
    assert q.terms == (("beach", 1.0), ("sunset", 1.0), ("people", NEGATIVE_WEIGHT), ("red car", NEGATIVE_WEIGHT))
    assert parse_query("whiteboard from the design review", now=NOW).terms == (
        ("whiteboard from the design review", 1.0),)


def test_filters():
    q = parse_query("diagram in:#design in:<#C123|general> from:<@U42> from:me", user_id="U7", now=NOW)
    assert q.channels == ("design", "C123") and q.authors == ("U42", "U7") and not q.all_channels
    assert parse_query("x in:all", now=NOW).all_channels
    assert parse_query("x in:<#987654321>", now=NOW).channels == ("987654321",)
    q = parse_query("x after:2024-01-01 before:2024-02-01", now=NOW)
    assert (q.after, q.before) == (day("2024-01-01"), day("2024-02-01"))


@pytest.mark.parametrize("phrase, start, end", [
    ("yesterday", "2024-05-14", "2024-05-15"),
    ("today", "2024-05-15", "2024-05-16"),
    ("last week", "2024-05-06", "2024-05-13"),
    ("this week", "2024-05-13", "2024-05-16"),
    ("last month", "2024-04-01", "2024-05-01"),
    ("past 3 days", "2024-05-13", "2024-05-16"),
    ("last year", "2023-01-01", "2024-01-01"),
])
def test_date_phrases(phrase, start, end):
    q = parse_query(f"whiteboard {phrase}", now=NOW)
    assert q.terms == (("whiteboard", 1.0),)
    assert (q.after, q.before) == (day(start), day(end)) and q.notes


def test_mistakes_are_user_errors():
    for bad in ("x before:soon", "cat before:yesterday-ish", "x after:2024-13-01", "-people", "x after:2024-02-01 before:2024-01-01",
                " ".join(f"+t{i}" for i in range(9)), "x" * 201):
        with pytest.raises(UserError):
            parse_query(bad, now=NOW)
    assert parse_query("cat before:yesterday", now=NOW).before == day("2024-05-14")


def test_contact_sheet_and_previews():
    big = Image.new("RGB", (1600, 900), (10, 120, 200))
    preview = make_preview(big)
    with Image.open(io.BytesIO(preview)) as im:
        assert im.format == "JPEG" and min(im.size) == PREVIEW_SIDE and max(im.size) <= 768
    png = contact_sheet([preview, None, b"not an image"], first_number=11)
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.width > im.height  # three cells in one row
        pixel = im.convert("RGB").getpixel((im.width // 6, im.height // 2))  # the first cell shows the preview
        assert all(abs(a - b) <= 3 for a, b in zip(pixel, (10, 120, 200)))  # (JPEG)


def test_contact_sheet_captions_and_weak_matches():
    from plugins.search.sheet import CELL, WEAK_BADGE

    preview = make_preview(Image.new("RGB", (300, 300), (10, 120, 200)))
    plain = contact_sheet([preview, preview])
    marked = contact_sheet([preview, preview], captions=["0.31  +3", ""], dimmed=[False, True])
    with Image.open(io.BytesIO(plain)) as a, Image.open(io.BytesIO(marked)) as b:
        a, b = a.convert("RGB"), b.convert("RGB")
        second = 8 + CELL + 8  # x of the second cell
        assert b.getpixel((second + 7, 8 + 15)) == WEAK_BADGE != a.getpixel((second + 7, 8 + 15))
        assert b.getpixel((8 + 7, 8 + 15)) == a.getpixel((8 + 7, 8 + 15))  # a match keeps its blue number
        caption_box = (8, 8 + CELL - 22, 8 + 60, 8 + CELL)
        assert a.crop(caption_box).tobytes() != b.crop(caption_box).tobytes()  # the score is written
        assert a.crop((second, 8 + CELL - 22, second + 60, 8 + CELL)).tobytes() == \
            b.crop((second, 8 + CELL - 22, second + 60, 8 + CELL)).tobytes()  # no caption, nothing drawn
