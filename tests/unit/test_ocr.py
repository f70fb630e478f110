"""engine.models.ocr: real OCR (rapidocr's bundled PP-OCRv4 models) on pictures written by Pillow."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from engine.errors import ModelUnavailable
from engine.models.ocr import get_ocr, lines_text
from tests.support.pictures import text_png


@pytest.fixture(scope="module")
def reader():
    return get_ocr(["en"])


def test_reads_the_lines_on_a_picture_with_their_boxes(reader):
    picture = Image.open(io.BytesIO(text_png(["Quarterly roadmap", "kiwi budget 2025"])))
    lines = reader.read(picture)
    assert [line.text for line in lines] == ["Quarterly roadmap", "kiwi budget 2025"]
    first, second = lines
    assert all(0.5 <= line.confidence <= 1 for line in lines)
    assert len(first.box) == 4
    # the first line is written from (30, 30), 40 px high; the second 70 px lower
    xs, ys = [x for x, _ in first.box], [y for _, y in first.box]
    assert min(xs) < 45 and min(ys) < 45 and 60 < max(ys) < 90
    assert min(y for _, y in second.box) > max(ys) - 5
    assert lines_text(lines) == "Quarterly roadmap\nkiwi budget 2025"


def test_a_picture_without_text_reads_nothing(reader):
    assert reader.read(Image.new("RGB", (320, 240), (40, 120, 200))) == []
    assert reader.read(Image.new("L", (12, 9), 0)) == []  # tiny and grey: still a picture, still nothing


def test_one_reader_per_process_and_languages_it_cannot_read_are_refused(reader):
    assert get_ocr(["EN "]) is reader
    with pytest.raises(ModelUnavailable, match="CLIPBOT_OCR_REC_MODEL"):
        get_ocr(["en", "ko"])
    with pytest.raises(ModelUnavailable, match="no language"):
        get_ocr([" "])
    with pytest.raises(ModelUnavailable, match="not there"):
        get_ocr(["ko"], rec_model="/nonexistent/korean_rec.onnx")
