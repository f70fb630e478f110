"""Text in every script for the /whatis chart: a chain of fonts, one picked per character.

The fonts are the Noto families (SIL Open Font License) that the `fonts` extra installs:
`manimgx-fonts` (Latin, Greek, Cyrillic, Arabic, Hebrew, the Indic and South-East Asian scripts,
symbols, monochrome emoji; 3.5 MB) and `manimgx-fonts-cjk` (Noto Sans CJK; 20 MB). A label is
cut into runs of characters one font draws (spaces, digits and punctuation stay with the run they
are in); each run is shaped by Pillow's raqm layout (Arabic joining, right-to-left order inside a
run) and a label whose first strong character is right-to-left is laid out right to left, runs
included. Without those packages (or without fontTools, which reads which characters a font has)
everything is drawn with Pillow's built-in font: characters it lacks show as boxes, nothing fails.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from PIL import ImageDraw, ImageFont, features

log = logging.getLogger(__name__)

# (package, file, face index in a collection), in the order a character is looked up.
_CHAIN = (
    ("manimgx_fonts", "NotoSans[wght].ttf", 0),
    ("manimgx_fonts", "NotoSansArabic[wght].ttf", 0),
    ("manimgx_fonts", "NotoSansHebrew[wght].ttf", 0),
    ("manimgx_fonts_cjk", "NotoSansCJK-VF.otf.ttc", 2),  # face 2: Simplified Chinese forms (all of CJK)
    *((("manimgx_fonts", f"NotoSans{script}[wght].ttf", 0)) for script in (
        "Devanagari", "Bengali", "Tamil", "Telugu", "Kannada", "Malayalam", "Gujarati", "Gurmukhi", "Oriya",
        "Sinhala", "Thai", "Lao", "Khmer", "Myanmar", "Georgian", "Armenian", "Ethiopic")),
    ("manimgx_fonts", "NotoSansSymbols[wght].ttf", 0),
    ("manimgx_fonts", "NotoEmoji[wght].ttf", 0),
)
_RTL = {"R", "AL"}
_JOINERS = {"\u200d", "\ufe0e", "\ufe0f"}  # zero-width joiner, variation selectors: part of the run


@dataclass(eq=False)
class _Face:
    path: Path
    index: int
    pictographs: bool = False  # emoji and symbols: spaces after one belong to the text font, not its wide space
    _cmap: set[int] | None = field(default=None, repr=False)
    _sizes: dict[int, ImageFont.FreeTypeFont] = field(default_factory=dict, repr=False)

    def covers(self, char: str) -> bool:
        if self._cmap is None:  # read once, on first need: the CJK collection's takes ~0.6 s
            from fontTools.ttLib import TTFont

            with TTFont(self.path, fontNumber=self.index, lazy=True) as font:
                self._cmap = set(font.getBestCmap())
        return ord(char) in self._cmap

    def at(self, size: int) -> ImageFont.FreeTypeFont:
        if size not in self._sizes:
            self._sizes[size] = ImageFont.truetype(str(self.path), size, index=self.index, layout_engine=_LAYOUT)
        return self._sizes[size]


_LAYOUT = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
_faces: list[_Face] | None = None
_lock = threading.Lock()


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def installed_faces() -> list[_Face]:
    """The chain's fonts found on this machine (empty without the packages or fontTools)."""
    if importlib.util.find_spec("fontTools") is None:
        return []
    faces = []
    for package, filename, index in _CHAIN:
        folder = _package_dir(package)
        if folder is not None and (folder / filename).is_file():
            faces.append(_Face(folder / filename, index, pictographs="Emoji" in filename or "Symbols" in filename))
    return faces


def _chain() -> list[_Face]:
    global _faces
    with _lock:
        if _faces is None:
            _faces = installed_faces()
            if not _faces:
                log.info("no Noto fonts installed (pip install 'clipbot[fonts]'): charts use Pillow's font")
        return _faces


@dataclass(frozen=True)
class Run:
    text: str
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont
    rtl: bool


def is_rtl(text: str) -> bool:
    """Whether text reads right to left: its first strong character is Hebrew, Arabic, ..."""
    for char in text:
        kind = unicodedata.bidirectional(char)
        if kind in _RTL:
            return True
        if kind == "L":
            return False
    return False


def runs(text: str, size: int) -> list[Run]:
    """`text` cut into runs that one font draws, in reading (logical) order."""
    faces = _chain()
    if not faces:
        return [Run(text, ImageFont.load_default(size=size), is_rtl(text))] if text else []
    out: list[tuple[str, _Face]] = []
    for char in text:
        last = out[-1][1] if out else None
        if last and (char in _JOINERS or (_neutral(char) and not last.pictographs and last.covers(char))):
            out[-1] = (out[-1][0] + char, out[-1][1])  # stays with the run it is in
            continue
        face = next((f for f in faces if f.covers(char)), faces[0])  # none has it: a box in the first
        if out and out[-1][1] is face:
            out[-1] = (out[-1][0] + char, face)
        else:
            out.append((char, face))
    return [Run(t, face.at(size), is_rtl(t)) for t, face in out]


def _neutral(char: str) -> bool:
    """Spaces, digits, punctuation: characters with no script of their own."""
    return unicodedata.bidirectional(char) in ("WS", "ON", "CS", "ES", "ET", "EN", "BN", "S")


def _shaped(run: Run) -> bool:
    return getattr(run.font, "layout_engine", None) == ImageFont.Layout.RAQM


def _direction(run: Run) -> dict:
    return {"direction": "rtl" if run.rtl else "ltr"} if _shaped(run) else {}


def _page_text(run: Run) -> str:
    """What to hand Pillow: raqm orders a run itself; the basic layout gets RTL text reversed."""
    return run.text[::-1] if run.rtl and not _shaped(run) else run.text


def width(text: str, size: int) -> float:
    return sum(run.font.getlength(run.text, **_direction(run)) for run in runs(text, size))


def fit(text: str, size: int, max_width: float) -> str:
    """`text`, cut short with an ellipsis so it is at most `max_width` pixels wide."""
    if width(text, size) <= max_width:
        return text
    while text and width(text + "…", size) > max_width:
        text = text[:-1]
    return text + "…"


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, *, size: int, fill: object,
              box_width: float | None = None) -> None:
    """Draw `text` at `xy` (top left); a right-to-left text is aligned to the right of `box_width`."""
    parts = runs(text, size)
    rtl = is_rtl(text)
    x, y = xy
    widths = [run.font.getlength(run.text, **_direction(run)) for run in parts]
    if rtl and box_width is not None:
        x += max(0.0, box_width - sum(widths))
    for run, w in _visual(parts, widths, rtl):
        draw.text((x, y), _page_text(run), font=run.font, fill=fill, **_direction(run))
        x += w


def _visual(parts: list[Run], widths: list[float], rtl: bool) -> Iterator[tuple[Run, float]]:
    """Runs left to right on the page: reversed for a right-to-left label."""
    pairs = list(zip(parts, widths))
    return iter(reversed(pairs) if rtl else pairs)
