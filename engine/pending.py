"""Named pending queues: items waiting for a batch task, and the lease that lets one drain
task at a time work through them.

A producer appends items; whoever appends first while no drain task holds the lease submits
one. The drain task takes up to N items per batch (e.g. /search embeds N pictures per model
call), so a burst costs a few batched calls instead of one per item. Items are peeked,
processed, then acknowledged: a worker that dies mid-batch leaves them for the next drain
(the work must be idempotent). Redis when distributed; memory in the embedded engine (one
process). Plugins reach a queue by name through their engine face (`pending(name)`).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.app import Engine

LEASE_SECONDS = 300  # a drain task renews it every batch; a dead one's lease runs out
_memory: "weakref.WeakKeyDictionary[Engine, dict[str, _MemoryPending]]" = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


class PendingQueue(Protocol):
    """Items waiting for a drain task, and its lease."""

    def push(self, items: list[dict]) -> bool:
        """Append items; True if the caller took the lease and must submit a drain task."""

    def peek(self, n: int) -> list[dict]:
        """The first `n` items, left in place until `ack` (renews the lease)."""

    def ack(self, n: int) -> None:
        """Drop the first `n` items: they are done."""

    def size(self) -> int: ...

    def release(self) -> bool:
        """Give the lease back; True if items arrived meanwhile and the caller took it again."""

    def abandon(self) -> None:
        """Drop the lease without draining (the drain task could not be submitted)."""


class _RedisPending:
    def __init__(self, client: Any, name: str) -> None:
        self._redis = client
        self._items = f"clipbot:{name}:pending"
        self._lease = f"clipbot:{name}:drain"

    def push(self, items: list[dict]) -> bool:
        if items:
            self._redis.rpush(self._items, *(json.dumps(i) for i in items))
        return bool(self._redis.set(self._lease, "1", nx=True, ex=LEASE_SECONDS))

    def peek(self, n: int) -> list[dict]:
        self._redis.expire(self._lease, LEASE_SECONDS)
        return [json.loads(raw) for raw in self._redis.lrange(self._items, 0, n - 1)]

    def ack(self, n: int) -> None:
        self._redis.ltrim(self._items, n, -1)

    def size(self) -> int:
        return int(self._redis.llen(self._items))

    def release(self) -> bool:
        self._redis.delete(self._lease)
        return self.size() > 0 and bool(self._redis.set(self._lease, "1", nx=True, ex=LEASE_SECONDS))

    def abandon(self) -> None:
        self._redis.delete(self._lease)


class _MemoryPending:
    def __init__(self) -> None:
        self._items: deque[dict] = deque()
        self._lock = threading.Lock()
        self._leased = False

    def push(self, items: list[dict]) -> bool:
        with self._lock:
            self._items.extend(json.loads(json.dumps(i)) for i in items)
            taken, self._leased = not self._leased, True
            return taken

    def peek(self, n: int) -> list[dict]:
        with self._lock:
            return [self._items[i] for i in range(min(n, len(self._items)))]

    def ack(self, n: int) -> None:
        with self._lock:
            for _ in range(min(n, len(self._items))):
                self._items.popleft()

    def size(self) -> int:
        with self._lock:
            return len(self._items)

    def release(self) -> bool:
        with self._lock:
            self._leased = bool(self._items)
            return self._leased

    def abandon(self) -> None:
        with self._lock:
            self._leased = False


def pending_queue(engine: "Engine", name: str) -> PendingQueue:
    """The pending queue `name` of this engine (Redis keys `clipbot:NAME:pending`, `:drain`)."""
    if engine.redis is not None:
        return _RedisPending(engine.redis, name)
    with _memory_lock:
        queues = _memory.setdefault(engine, {})
        if name not in queues:
            queues[name] = _MemoryPending()
        return queues[name]
