"""Download a file once, with a progress bar, verified by SHA-256, appearing only when complete.

Shared by the model modules (CLIP weights from urls, VQGAN configs and checkpoints). Nothing here
imports torch; network failures become `ModelUnavailable` within seconds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

from engine.datadir import create_file, make_dir
from engine.errors import ModelUnavailable

NETWORK_TIMEOUT_S = 5.0  # connect (and per-read) timeout: offline should fail in seconds
_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def brief(exc: BaseException) -> str:
    """One line naming an exception, for user-facing messages."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:200]}" if first_line else type(exc).__name__


def hf_offline() -> bool:
    """Whether Hugging Face offline mode is on (HF_HUB_OFFLINE, read now or when the hub was imported)."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


def hf_endpoint() -> str:
    """The Hub's address. Read at call time: huggingface_hub reads HF_ENDPOINT only when first imported."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


class QuietTqdm(tqdm):
    """A progress bar that never draws (for `progress=False`)."""

    def __init__(self, *args, **kwargs):
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def check_reachable(url: str) -> str | None:
    """None when `url`'s server (or the proxy for it) accepts a connection; else why not.

    Fails in seconds instead of after a client's retries with back-off."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host or ""):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = proxy_parts.hostname, proxy_parts.port or 80
    try:
        socket.create_connection((host, port), timeout=NETWORK_TIMEOUT_S).close()
    except OSError as exc:
        return f"cannot reach {host}:{port} ({brief(exc)})"
    return None


class DownloadFailed(ModelUnavailable):
    """The network or the server failed us (not a bad file)."""


def download(url: str, target: Path, *, expected_sha256: str = "", progress: bool = True,
             what: str = "the file") -> str:
    """Stream `url` to `target` with a progress bar; returns the file's SHA-256.

    `expected_sha256` (a full hash or a prefix) is checked before the file appears at `target`;
    a mismatch deletes the download and raises ModelUnavailable naming `what`.
    """
    make_dir(target.parent)
    partial = create_file(target.with_name(f"{target.name}.{os.getpid()}.part")) 
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=NETWORK_TIMEOUT_S) as response, partial.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress) as bar:
                while chunk := response.read(_CHUNK_BYTES):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, short bodies
        partial.unlink(missing_ok=True)
        raise DownloadFailed(f"fetching {url} failed ({brief(exc)})") from exc
    got = digest.hexdigest()
    if expected_sha256 and not got.startswith(expected_sha256):
        partial.unlink(missing_ok=True)
        raise ModelUnavailable(
            f"{what} downloaded from {url} failed its SHA-256 check "
            f"(got {got[:16]}…, expected {expected_sha256[:16]}…) and was deleted; try again."
        )
    partial.replace(target)
    return got
