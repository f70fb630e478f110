"""Pictures for tests: plain colours as PNG bytes or files, words written on a picture (for OCR), and a PNG
whose header lies about its size."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path


def png_bytes(color=(200, 30, 30), size=(96, 64)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image(path: Path, size=(96, 64), color=(200, 30, 30), fmt="PNG") -> Path:
    from PIL import Image

    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def text_png(lines: list[str], size=(640, 360), background=(250, 250, 245), ink=(20, 20, 60)) -> bytes:
    """A picture with `lines` written on it, as a slide or screenshot has them. The font is Pillow's
    own (`ImageFont.load_default(size=...)`, a scalable FreeType font built into Pillow >= 10.1), so
    no font needs to be installed on the machine."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    picture = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(lines):
        draw.text((30, 30 + i * 70), line, fill=ink, font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny 8-bit greyscale PNG whose IHDR claims width×height; it holds one row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
