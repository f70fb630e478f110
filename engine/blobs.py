"""Image bytes by key. Jobs pass keys, never image bytes, through the broker or result records."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Iterable, Protocol

from engine.errors import UserError
from engine.store import reachable

_PREFIX = "clipbot:blob:"
log = logging.getLogger(__name__)


class BlobStore(Protocol):
    def put(self, data: bytes, *, ttl: int | None = None) -> str: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...


class BlobMissing(UserError):
    """The bytes behind a key are gone (expired or deleted)."""

    def __init__(self, key: str) -> None:
        super().__init__("That image is no longer available (uploads expire); please post it again.")
        self.key = key


def discard(blobs: BlobStore, keys: Iterable[str], why: str) -> None:
    """Delete blobs whose work is done, best effort: a failure is logged and the TTL removes them."""
    for key in dict.fromkeys(keys):
        try:
            blobs.delete(key)
        except Exception:
            log.warning("could not delete blob %s (%s); it expires with its TTL", key, why, exc_info=True)


def _new_key() -> str:
    return uuid.uuid4().hex


class MemoryBlobStore:
    """In-process blobs for the embedded engine and tests. Expired entries are dropped when
    read and, at most once a second, all at once when something is stored."""

    def __init__(self, default_ttl: int | None = None) -> None:
        self._items: dict[str, tuple[bytes, float | None]] = {}
        self._lock = threading.Lock()
        self._default_ttl = default_ttl
        self._next_sweep = 0.0

    def put(self, data: bytes, *, ttl: int | None = None) -> str:
        key = _new_key()
        ttl = ttl or self._default_ttl
        now = time.monotonic()
        with self._lock:
            self._items[key] = (bytes(data), now + ttl if ttl else None)
            if now >= self._next_sweep:
                self._next_sweep = now + 1.0
                for old in [k for k, (_, expires) in self._items.items() if expires is not None and expires < now]:
                    del self._items[old]
        return key

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> bytes:
        with self._lock:
            item = self._items.get(key)
            if item and item[1] is not None and item[1] < time.monotonic():
                del self._items[key]
                item = None
        if item is None:
            raise BlobMissing(key)
        return item[0]

    def delete(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def take(self, key: str) -> tuple[bytes, float | None]:
        """Remove a blob and return it with the seconds it had left (None: no expiry)."""
        with self._lock:
            item = self._items.pop(key, None)
        now = time.monotonic()
        if item is None or (item[1] is not None and item[1] < now):
            raise BlobMissing(key)
        return item[0], None if item[1] is None else item[1] - now


class RedisBlobStore:
    """Blobs in Redis with a TTL, shared by the bot and every worker."""

    def __init__(self, client, default_ttl: int = 86400) -> None:
        self._redis = client
        self._default_ttl = default_ttl

    @reachable
    def put(self, data: bytes, *, ttl: int | None = None) -> str:
        key = _new_key()
        self._redis.set(_PREFIX + key, bytes(data), ex=ttl or self._default_ttl)
        return key

    @reachable
    def get(self, key: str) -> bytes:
        data = self._redis.get(_PREFIX + key)
        if data is None:
            raise BlobMissing(key)
        return data

    @reachable
    def delete(self, key: str) -> None:
        self._redis.delete(_PREFIX + key)
