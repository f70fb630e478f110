"""Reading text in pictures: the only importer of rapidocr (PP-OCRv4 on ONNX Runtime).

`rapidocr-onnxruntime` carries its detection, direction and recognition models (ONNX, ~15 MB)
inside its wheel, so `pip install` brings everything and nothing is downloaded at run time.
Its bundled recognition model reads Simplified Chinese and English (Latin letters without
accents, digits, punctuation): languages `zh` and `en`. Another script needs a PP-OCR
recognition model in ONNX for it (RapidOCR publishes conversions of PaddleOCR's latin,
cyrillic, korean, japan, arabic, devanagari... models), named by `CLIPBOT_OCR_REC_MODEL`
(with `CLIPBOT_OCR_REC_KEYS`, its character list, when the model does not carry one).

Detection never enlarges a picture (limit type "max", PaddleOCR's own default; rapidocr's is to
enlarge the shorter side to 736 px, twice the work): a 640×480 screenshot reads in ~0.15 s on
one core, a blank picture in a few ms; big pictures are looked at with their longer side at
most 960, 1500 or 2000 px (rapidocr's steps). Callers decode pictures for OCR with their shorter
side at least `READ_SIDE`. Each reader is loaded once per process (`engine.models.registry`)
and is called from several threads at once: ONNX Runtime sessions allow it, and the only state
a call leaves (the detector's resize step for the picture's size) changes how much the next
big picture is shrunk, never what is read back. Each call uses one core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.errors import ModelUnavailable
from engine.models.registry import registry

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["BUNDLED_LANGS", "READ_SIDE", "OcrReader", "TextLine", "get_ocr", "lines_text"]

BUNDLED_LANGS = frozenset({"en", "zh"})
READ_SIDE = 960  # shorter side of the pictures handed to OCR (when they have that many pixels)
MIN_CONFIDENCE = 0.5  # rapidocr's own text_score: lines read with less are dropped


@dataclass(frozen=True)
class TextLine:
    """One line of text read on a picture: the words, the four corners of its box (pixels of the
    picture given, clockwise from top left) and the recogniser's confidence (0..1)."""

    text: str
    box: tuple[tuple[float, float], ...]
    confidence: float


class OcrReader:
    """A loaded OCR engine: `read(picture)` is a pure function of the picture."""

    def __init__(self, langs: tuple[str, ...], rec_model: Path | None = None, rec_keys: Path | None = None) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # the bot-only install, or OpenCV without its system libraries
            raise ModelUnavailable(f"OCR needs rapidocr-onnxruntime (the worker extra) and OpenCV's libraries "
                                   f"(on Debian: apt-get install libgl1 libglib2.0-0): {exc}") from None
        options = {"intra_op_num_threads": 1, "inter_op_num_threads": 1,  # callers run several at once
                   "det_limit_type": "max", "text_score": MIN_CONFIDENCE}
        if rec_model is not None:
            options["rec_model_path"] = str(rec_model)
            if rec_keys is not None:
                options["rec_keys_path"] = str(rec_keys)
        self.langs = langs
        self._engine = RapidOCR(**options)

    def read(self, picture: "Image.Image") -> list[TextLine]:
        """The lines of text on `picture` (any mode), top to bottom, left to right."""
        bgr = np.ascontiguousarray(np.asarray(picture.convert("RGB"))[:, :, ::-1])
        found, _ = self._engine(bgr)
        return [TextLine(str(text).strip(), tuple((float(x), float(y)) for x, y in box), float(score))
                for box, text, score in (found or []) if str(text).strip()]


def lines_text(lines: list[TextLine]) -> str:
    """What the index stores of a picture's text: its lines, one a line."""
    return "\n".join(line.text for line in lines)


def get_ocr(langs: list[str] | tuple[str, ...], rec_model: Path | None = None,
            rec_keys: Path | None = None) -> OcrReader:
    """The OCR reader for these languages, loaded once per process. Raises ModelUnavailable
    when the languages need a recognition model that is not given or not there."""
    langs = tuple(sorted({lang.strip().lower() for lang in langs if lang.strip()}))
    if not langs:
        raise ModelUnavailable("CLIPBOT_OCR_LANGS names no language; set it (e.g. en) or turn OCR off.")
    if rec_model is None and not set(langs) <= BUNDLED_LANGS:
        others = ", ".join(sorted(set(langs) - BUNDLED_LANGS))
        raise ModelUnavailable(f"The bundled OCR model reads en and zh, not {others}: set CLIPBOT_OCR_REC_MODEL to a "
                               "PP-OCR recognition model (ONNX) for those languages.")
    for path in (rec_model, rec_keys):
        if path is not None and not Path(path).is_file():
            raise ModelUnavailable(f"OCR model file {path} is not there.")
    key = f"ocr:{','.join(langs)}:{rec_model or 'bundled'}:{rec_keys or ''}"
    return registry.get(key, lambda: OcrReader(langs, rec_model, rec_keys))
