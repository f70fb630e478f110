"""The /whatis chart draws every script: CJK, emoji and right-to-left labels with the Noto fonts,
and falls back to Pillow's own font (boxes, no failure) without them."""

import io

import pytest
from PIL import Image, ImageChops, ImageDraw

from plugins.whatis import chart, fonts
from plugins.whatis.results import Scored


def label_pixels(label: str) -> Image.Image:
    """The label column of a one-row chart."""
    with Image.open(io.BytesIO(chart.render_chart([Scored(label, 0.5)]))) as image:
        return image.convert("L").crop((0, 0, 260, image.height))


def same(a: Image.Image, b: Image.Image) -> bool:
    return ImageChops.difference(a, b).getbbox() is None


@pytest.fixture
def no_fonts(monkeypatch):
    monkeypatch.setattr(fonts, "_faces", [])  # as if the font packages were not installed


def test_each_script_gets_a_font_that_has_it():
    names = {text: [run.font.getname()[0] for run in fonts.runs(text, 16)]
             for text in ("猫", "قطة", "כלב", "🐱", "cat")}
    assert names == {"猫": ["Noto Sans CJK SC"], "قطة": ["Noto Sans Arabic"], "כלב": ["Noto Sans Hebrew"],
                     "🐱": ["Noto Emoji"], "cat": ["Noto Sans"]}
    mixed = fonts.runs("猫 cat 🐱", 16)
    assert [r.text for r in mixed] == ["猫 ", "cat ", "🐱"]


def test_distinct_glyphs_not_boxes(no_fonts):
    # Without fonts, 猫 and 犬 are the same box; with the chain they are different glyphs.
    assert same(label_pixels("猫"), label_pixels("犬"))


def test_cjk_arabic_and_emoji_draw_real_glyphs():
    for a, b in (("猫", "犬"), ("قطة", "كلب"), ("🐱", "🐶"), ("שלום", "כלב")):
        assert not same(label_pixels(a), label_pixels(b)), (a, b)


def test_right_to_left_labels_are_right_aligned_and_runs_reversed():
    image = Image.new("L", (300, 40), 255)
    fonts.draw_text(ImageDraw.Draw(image), (0, 0), "כלב 3", size=24, fill=0, box_width=300)
    left, _, right, _ = ImageChops.invert(image).getbbox()
    assert right > 280 and left > 150  # hugs the right edge of its box
    digit = Image.new("L", (300, 40), 255)
    fonts.draw_text(ImageDraw.Draw(digit), (0, 0), "3", size=24, fill=0)
    three_width = ImageChops.invert(digit).getbbox()[2]
    # the digit, read last, is drawn leftmost: the first columns of the label are the "3"
    assert same(image.crop((left, 0, left + three_width - 2, 40)),
                digit.crop((digit_left := ImageChops.invert(digit).getbbox()[0], 0,
                            digit_left + three_width - 2, 40)))


def test_long_labels_are_cut_with_an_ellipsis():
    cut = fonts.fit("an extremely long label " * 5, 16, 200)
    assert cut.endswith("…") and fonts.width(cut, 16) <= 200


def test_without_fonts_the_chart_still_draws(no_fonts):
    png = chart.render_chart([Scored("猫 🐱 قطة", 0.004), Scored("dog", 0.996)], title="What is 写真?", note="n")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.width == 640


def test_installed_faces_need_fonttools(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fontTools" else real(name, *a))
    assert fonts.installed_faces() == []
