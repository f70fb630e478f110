"""Job events for asyncio followers, without a thread or a connection per follower.

`MemoryFeed` hangs followers on the embedded event log (a callback hands each event to the
follower's loop). `RedisFeed` runs ONE reader task per event loop: a single XREAD BLOCK over
every followed job's stream, fanned out to per-follower queues. A new follower wakes the
blocked reader by adding to the feed's own small wake stream. When Redis goes away the reader
says so once, retries with backoff and carries on from its cursors when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from engine.jobs import EVENTS, JobRecord, MemoryEventLog, ProgressEvent

log = logging.getLogger(__name__)

_WAKE = "clipbot:wake:"
_BLOCK_MS = 5000
_BACKOFF = (0.1, 2.0)


class Follower:
    """One follower's view of one job: its events, in order, as they arrive."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.cursor = "0-0"  # RedisFeed: the last stream id handed over
        self._queue: asyncio.Queue[ProgressEvent] = asyncio.Queue()

    async def get(self, timeout: float) -> ProgressEvent | None:
        """The next event, or None when `timeout` seconds pass without one."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        try:
            return await asyncio.wait_for(self._queue.get(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return None

    def put(self, event: ProgressEvent) -> None:
        self._queue.put_nowait(event)


class MemoryFeed:
    """Followers of the embedded engine's jobs; works from any event loop."""

    def __init__(self, log_: MemoryEventLog, get_record: Callable[[str], JobRecord | None]) -> None:
        self._log = log_
        self._get_record = get_record

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[Follower]:
        loop = asyncio.get_running_loop()
        follower = Follower(job_id)

        def deliver(event: ProgressEvent) -> None:  # called on the worker thread, under the log's lock
            try:
                loop.call_soon_threadsafe(follower.put, event)
            except RuntimeError:  # the follower's loop is closed: nobody is listening any more
                pass

        past, unsubscribe = self._log.subscribe(job_id, deliver)
        for event in past:
            follower.put(event)
        if not past:  # a job finished before this process started (engine.archive): its end at once
            record = self._get_record(job_id)
            if record is not None and record.finished:
                follower.put(ProgressEvent(record.state, job_id, record.finished_at or 0.0,
                                           {"result": record.result, "error": record.error}))
        try:
            yield follower
        finally:
            unsubscribe()

    async def record(self, job_id: str) -> JobRecord | None:
        return self._get_record(job_id)  # an in-memory SQLite lookup: microseconds


class RedisFeed:
    """All followers of one event loop, served by one reader task and two connections."""

    def __init__(self, url: str, record_key: Callable[[str], str]) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # The reader blocks for _BLOCK_MS; it retries by itself (see _read), so no client retries.
        self._reader = aioredis.Redis.from_url(url, socket_timeout=_BLOCK_MS / 1000 + 10, socket_connect_timeout=5,
                                               single_connection_client=True, retry=Retry(NoBackoff(), 0))
        self._commands = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, max_connections=4)
        self._record_key = record_key
        self._wake = _WAKE + uuid.uuid4().hex
        self._wake_cursor = "0-0"
        self._wake_pending = False
        self._followers: dict[str, list[Follower]] = {}  # stream key -> followers
        self._task: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()

    @asynccontextmanager
    async def follow(self, job_id: str) -> AsyncIterator[Follower]:
        follower = Follower(job_id)
        key = EVENTS + job_id
        self._followers.setdefault(key, []).append(follower)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="clipbot-event-reader")
        else:
            self._wake_reader()
        try:
            yield follower
        finally:
            followers = self._followers.get(key, [])
            if follower in followers:
                followers.remove(follower)
            if not followers:
                self._followers.pop(key, None)

    async def record(self, job_id: str) -> JobRecord | None:
        import json

        raw = await self._commands.get(self._record_key(job_id))
        return JobRecord.from_dict(json.loads(raw)) if raw else None

    @property
    def followed(self) -> int:
        return sum(len(f) for f in self._followers.values())

    # ---- the reader ------------------------------------------------------------------
    def _wake_reader(self) -> None:
        """Interrupt the reader's blocking XREAD so it picks up new followers (once per read)."""
        if self._wake_pending:
            return
        self._wake_pending = True
        task = asyncio.create_task(self._send_wake())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_wake(self) -> None:
        try:
            async with self._commands.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake, {"w": "1"}, maxlen=10, approximate=True)
                pipe.expire(self._wake, 3600)
                await pipe.execute()
        except Exception as exc:  # Redis down: the reader is retrying and will see the follower then
            log.debug("could not wake the event reader: %s", exc)

    async def _run(self) -> None:
        backoff, down_since = _BACKOFF[0], None
        try:
            while self._followers:
                try:
                    answer = await self._read()
                except _read_errors() as exc:
                    if down_since is None:
                        down_since = asyncio.get_running_loop().time()
                        log.warning("lost Redis while following %d job(s) (%s); reconnecting", self.followed, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(_BACKOFF[1], backoff * 2)
                    continue
                if down_since is not None:
                    log.warning("Redis is back; following %d job(s) again", self.followed)
                    backoff, down_since = _BACKOFF[0], None
                self._deliver(answer)
        except asyncio.CancelledError:  # the loop is shutting down (asyncio.run ending): close cleanly
            await _quietly(self._reader.aclose())
            await _quietly(self._commands.aclose())
            raise
        finally:
            if asyncio.current_task() is self._task:
                self._task = None

    async def _read(self) -> Any:
        streams = {key: min(f.cursor for f in followers) for key, followers in self._followers.items()}
        streams[self._wake] = self._wake_cursor
        self._wake_pending = False
        return await self._reader.xread(streams, block=_BLOCK_MS)

    def _deliver(self, answer: Any) -> None:
        for stream, entries in answer or ():
            key = stream.decode() if isinstance(stream, bytes) else stream
            if key == self._wake:
                self._wake_cursor = _decode(entries[-1][0])
                continue
            for raw_id, fields in entries:
                entry_id = _decode(raw_id)
                event = ProgressEvent.from_json(fields[b"e"])
                for follower in self._followers.get(key, ()):
                    if _newer(entry_id, follower.cursor):
                        follower.cursor = entry_id
                        follower.put(event)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await _quietly(self._reader.aclose())
        await _quietly(self._commands.aclose())


def _read_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (OSError, asyncio.TimeoutError, redis.ConnectionError, redis.TimeoutError)


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _newer(entry_id: str, cursor: str) -> bool:
    a, _, b = entry_id.partition("-")
    c, _, d = cursor.partition("-")
    return (int(a), int(b or 0)) > (int(c), int(d or 0))


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception:
        pass
