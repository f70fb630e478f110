"""Files people send become checked, stored `Attachment`s: one intake for every surface.

Discord, Slack, the local chat, `/post`'s history and the CLI verbs all take a file the same way:
its bytes (a platform file is downloaded by `Downloader`: trusted hosts only, redirects followed
by hand and re-checked, the body read to its end or refused over the size limit) → the size and
image check of `engine.images` → the blob store → an `Attachment`.

No torch here, and no aiohttp at import time: the local chat and the CLI use this module without
the discord/slack extras installed.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable
from urllib.parse import urlsplit

from bot.commands import Attachment
from bot.config import check_test_file_host
from engine.errors import UserError
from engine.images import ImageInfo, inspect_image, read_image_file

if TYPE_CHECKING:
    import aiohttp

    from engine.blobs import BlobStore
    from engine.settings import EngineSettings

__all__ = ["Downloaded", "Downloader", "FileHosts", "ImageLimits", "download_attachment",
           "file_attachment", "image_attachment", "too_big", "unreachable"]

_CHUNK = 64 * 1024
_MAX_REDIRECTS = 4
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int

    @classmethod
    def of(cls, settings: "EngineSettings") -> "ImageLimits":
        return cls(settings.max_image_bytes, settings.max_image_pixels)


def too_big(max_bytes: int, name: str = "That file") -> UserError:
    """The one size refusal, whether the platform said the size or the download showed it."""
    return UserError(f"{name} is too big (the limit is {_size_text(max_bytes)}).")


def _size_text(size: int) -> str:
    return f"{size / 2 ** 20:.0f} MB" if size >= 2 ** 20 else f"{max(1, size // 1024)} KB"


# ---- bytes → Attachment -------------------------------------------------------------------------------
def image_attachment(blobs: "BlobStore", data: bytes, *, filename: str, limits: ImageLimits,
                     source_id: str = "") -> Attachment:
    """Check `data` as an image (size, format, pixels) and store it. Blocking: run it off the event loop."""
    info = inspect_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    return _stored(blobs, data, info, filename, source_id)


def file_attachment(blobs: "BlobStore", path: str | Path, *, limits: ImageLimits, filename: str | None = None) -> Attachment:
    """A local file as an attachment; its size is checked before it is read. Blocking."""
    data, info = read_image_file(path, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels)
    return _stored(blobs, data, info, filename or Path(path).name, "")


def _stored(blobs: "BlobStore", data: bytes, info: ImageInfo, filename: str, source_id: str) -> Attachment:
    return Attachment(key=blobs.put(data), filename=filename or "image", content_type=info.content_type,
                      size=len(data), source_id=source_id)


async def download_attachment(downloader: "Downloader", blobs: "BlobStore", url: str, *, filename: str,
                              limits: ImageLimits, source_id: str = "", declared_size: int | None = None) -> Attachment:
    """Download a platform file and take it in. A size the platform declares over the limit is refused
    before anything is fetched; the download itself is held to the limit whatever was declared."""
    if declared_size is not None and declared_size > limits.max_bytes:
        raise too_big(limits.max_bytes, filename or "That file")
    downloaded = await downloader.fetch(url)
    return await asyncio.to_thread(image_attachment, blobs, downloaded.data, filename=filename, limits=limits,
                                   source_id=source_id)


# ---- which hosts files come from ---------------------------------------------------------------------
class FileHosts:
    """Where a platform's files may come from: its own https hosts (exact names, or domains whose
    subdomains count), and the loopback `HOST:PORT`s of CLIPBOT_TEST_FILE_HOSTS (http allowed)."""

    def __init__(self, *, hosts: Iterable[str] = (), domains: Iterable[str] = (), test_hosts: Iterable[str] = ()) -> None:
        self._hosts = frozenset(hosts)
        self._domains = tuple(domains)
        self._test_hosts = frozenset(check_test_file_host(h) for h in test_hosts)

    def trusted(self, url: str) -> bool:
        parts = urlsplit(url)
        try:
            host, port = (parts.hostname or "").lower(), parts.port
        except ValueError:  # a port that is not a number
            return False
        if parts.username is not None or parts.password is not None:
            return False
        if parts.scheme in ("http", "https") and port is not None and self._is_test_host(host, port):
            return True
        if parts.scheme != "https" or port not in (None, 443):
            return False
        return host in self._hosts or any(host == d or host.endswith("." + d) for d in self._domains)

    def _is_test_host(self, host: str, port: int) -> bool:
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}") in self._test_hosts


# ---- downloading -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Downloaded:
    data: bytes
    content_type: str


class Downloader:
    """GETs platform files: only from `hosts`, redirects followed by hand (each hop checked again;
    `credentials` go only to the origin of the URL asked for, never to another host), and the body
    read to its end or refused once it passes `max_bytes`, whatever the platform or the response
    claimed. `platform` ("Discord", "Slack") names who would not give the file; `check_type` may
    refuse a response by its content type before its body is read (Slack's login page)."""

    def __init__(self, hosts: FileHosts, *, platform: str, max_bytes: int, refusal: str,
                 credentials: dict[str, str] | None = None, timeout: float = 60.0,
                 check_type: Callable[[str], None] | None = None) -> None:
        self.hosts = hosts
        self.platform = platform
        self.max_bytes = max_bytes
        self._refusal = refusal  # what to say about a URL off the trusted hosts
        self._credentials = dict(credentials or {})
        self._check_type = check_type
        self._timeout = timeout
        self._session: "aiohttp.ClientSession | None" = None

    async def fetch(self, url: str) -> Downloaded:
        """The file's bytes and content type; a UserError that says what went wrong otherwise."""
        import aiohttp
        import yarl

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout))
        origin = _origin(url)
        for _ in range(_MAX_REDIRECTS + 1):
            if not self.hosts.trusted(url):
                raise UserError(self._refusal)
            headers = self._credentials if _origin(url) == origin else {}
            host = urlsplit(url).netloc
            try:
                async with self._session.get(url, headers=headers, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and response.headers.get("Location"):
                        url = str(response.url.join(yarl.URL(response.headers["Location"])))
                        continue
                    if response.status != 200:
                        raise UserError(f"{self.platform} would not give me that file (HTTP {response.status}); "
                                        "post it again.")
                    if self._check_type is not None:
                        self._check_type(response.content_type or "")
                    return Downloaded(await self._body(response), response.content_type or "")
            except aiohttp.ClientConnectorError as exc:
                raise unreachable(f"{self.platform}'s file server", exc) from None
            except aiohttp.ClientPayloadError:
                raise UserError(f"The download from {host} was cut short; try again.") from None
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                reason = "it took too long" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
                raise UserError(f"I could not download that file from {host} ({reason}); try again.") from None
        raise UserError(f"{self.platform} sent that file round too many redirects.")

    async def _body(self, response: "aiohttp.ClientResponse") -> bytes:
        """Every byte to the end of the body; refused as soon as it is over the limit (the body may
        be larger than the platform or Content-Length said, so the count is what decides)."""
        if response.content_length is not None and response.content_length > self.max_bytes:
            raise too_big(self.max_bytes)
        body = bytearray()
        async for chunk in response.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise too_big(self.max_bytes)
        return bytes(body)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.scheme, (parts.hostname or "").lower(), port or {"http": 80, "https": 443}.get(parts.scheme)


def unreachable(what: str, exc: "aiohttp.ClientConnectorError") -> UserError:
    """One line for a host that did not answer at all: which host, and why (refused, no such name...)."""
    error = exc.os_error
    if isinstance(error, socket.gaierror) or not error.errno:  # a name that does not resolve, a timeout...
        reason = error.strerror or str(error) or type(error).__name__
    else:  # asyncio's "Connect call failed (...)" repeats the address: the errno says why
        reason = os.strerror(error.errno)
    return UserError(f"I could not reach {what} at {exc.host}:{exc.port} ({reason}); check the network "
                     "and the address, then try again.")
