"""Files served the way a CDN serves them, for the fake Discord and the fake Slack.

A real CDN does not hand over a file in one buffer: the body arrives in pieces, sometimes with a
Content-Length and sometimes chunked, and the size a platform's metadata claims need not be what
is sent. A reader that stops after the first read, or trusts the claimed size, fails here as it
fails in production. Bodies that are large on purpose (`lying_file`) are made as they are sent,
never held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import random
import socket
from dataclasses import dataclass
from typing import Iterator

from aiohttp import web

CHUNK = 16 * 1024
PAUSE = 0.001  # seconds between chunks: the client's buffer runs dry between them, as on a network


@dataclass(frozen=True)
class Served:
    """A file's bytes and how they go out.

    `data` is the body; with `size` set the body is `data` followed by filler up to `size` bytes,
    generated while it is sent. `claimed_size` is what the platform's metadata says (Discord's
    attachment `size`, Slack's file `size`); None: the real size. `content_length`: send the header
    (True) or a chunked body with no length up front (False). `cut_after`: drop the connection after
    that many bytes, as a CDN edge does now and then."""

    data: bytes
    content_type: str = "application/octet-stream"
    size: int | None = None
    claimed_size: int | None = None
    content_length: bool = True
    chunk: int = CHUNK
    pause: float = PAUSE
    cut_after: int | None = None

    @property
    def length(self) -> int:
        return self.size if self.size is not None else len(self.data)

    @property
    def declared(self) -> int:
        return self.claimed_size if self.claimed_size is not None else self.length

    def pieces(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), self.chunk):
            yield self.data[start:start + self.chunk]
        filler = b"\0" * self.chunk
        left = self.length - len(self.data)
        while left > 0:
            yield filler[:left]
            left -= len(filler)


def lying_file(head: bytes, *, claimed: int = 1000, actual: int = 100 * 1024 * 1024,
               content_type: str = "image/jpeg") -> Served:
    """A file whose metadata says `claimed` bytes and whose body, sent without a Content-Length,
    is `actual` bytes: `head` (a real picture's first bytes, so a reader that stops early sees a
    valid header) and then filler."""
    return Served(head, content_type, size=actual, claimed_size=claimed, content_length=False, chunk=64 * 1024,
                  pause=0)


async def send(request: web.Request, served: Served) -> web.StreamResponse:
    """Stream `served` in small pieces with pauses; a client that hangs up early ends it quietly."""
    response = web.StreamResponse(headers={"Content-Type": served.content_type})
    if served.content_length:
        response.content_length = served.length
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    sent = 0
    try:
        for piece in served.pieces():
            if served.cut_after is not None and sent + len(piece) > served.cut_after:
                await response.write(piece[:served.cut_after - sent])
                request.transport.close()  # mid-body: the client must notice it has not got the file
                return response
            await response.write(piece)
            sent += len(piece)
            if served.pause:
                await asyncio.sleep(served.pause)
        await response.write_eof()
    except (ConnectionError, asyncio.CancelledError):
        pass  # the client stopped reading (over its limit): what a CDN sees every day
    return response


@functools.lru_cache(maxsize=4)
def photo_jpeg(seed: int = 0, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A phone-camera-sized JPEG (12 MP, 3-8 MB): smooth colour with grain, so it neither compresses
    to nothing nor blows past the size limit."""
    from PIL import Image, ImageFilter

    rng = random.Random(seed)
    width, height = size
    small = Image.frombytes("RGB", (width // 64, height // 64), rng.randbytes((width // 64) * (height // 64) * 3))
    base = small.resize(size, Image.BILINEAR).filter(ImageFilter.GaussianBlur(2))
    grain = Image.frombytes("L", size, rng.randbytes(width * height)).convert("RGB")
    photo = Image.blend(base, grain, 0.22)
    out = io.BytesIO()
    photo.save(out, format="JPEG", quality=85)
    return out.getvalue()


@contextlib.contextmanager
def unreachable_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound and never listening, so every connection is refused
    (and no other process can take the port while the test runs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
