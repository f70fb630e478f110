"""Pictures waiting to be indexed, and the lease that lets one drain task at a time embed them.

Posting a picture appends an item here; whoever appends first while no drain task holds the
lease submits one. The drain task embeds up to N waiting pictures per model call, so a burst
of posts costs a few batched calls instead of one call per picture. Items are peeked, indexed,
then acknowledged: a worker that dies mid-batch leaves them for the next drain (re-indexing
is idempotent). Redis when distributed; memory in the embedded engine (one process).
"""

from __future__ import annotations

import json
import threading
import weakref
from collections import deque
from typing import Any

LEASE_SECONDS = 300  # a drain task renews it every batch; a dead one's lease runs out
_ITEMS = "clipbot:search:pending"
_LEASE = "clipbot:search:drain"
_memory: "weakref.WeakKeyDictionary[Any, _MemoryPending]" = weakref.WeakKeyDictionary()
_memory_lock = threading.Lock()


class _RedisPending:
    def __init__(self, client: Any) -> None:
        self._redis = client

    def push(self, items: list[dict]) -> bool:
        """Append items; True if the caller took the lease and must submit a drain task."""
        if items:
            self._redis.rpush(_ITEMS, *(json.dumps(i) for i in items))
        return bool(self._redis.set(_LEASE, "1", nx=True, ex=LEASE_SECONDS))

    def peek(self, n: int) -> list[dict]:
        self._redis.expire(_LEASE, LEASE_SECONDS)
        return [json.loads(raw) for raw in self._redis.lrange(_ITEMS, 0, n - 1)]

    def ack(self, n: int) -> None:
        self._redis.ltrim(_ITEMS, n, -1)

    def size(self) -> int:
        return int(self._redis.llen(_ITEMS))

    def release(self) -> bool:
        """Give the lease back; True if items arrived meanwhile and the caller took it again."""
        self._redis.delete(_LEASE)
        return self.size() > 0 and bool(self._redis.set(_LEASE, "1", nx=True, ex=LEASE_SECONDS))

    def abandon(self) -> None:
        """Drop the lease without draining (the drain task could not be submitted)."""
        self._redis.delete(_LEASE)


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


def pending_queue(engine: Any) -> Any:
    """The queue of pictures waiting to be indexed for this engine."""
    if getattr(engine, "redis", None) is not None:
        return _RedisPending(engine.redis)
    with _memory_lock:
        queue = _memory.get(engine)
        if queue is None:
            queue = _memory[engine] = _MemoryPending()
        return queue
