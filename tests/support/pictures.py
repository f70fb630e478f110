"""Pictures for tests: plain colours as PNG bytes or files, and a PNG whose header lies about its size."""

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


def png_header_only(width: int, height: int) -> bytes:
    """A tiny 8-bit greyscale PNG whose IHDR claims width×height; it holds one row of pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
