"""Job records and progress events.

Every job has a record (state, timings, attempts, small JSON result) in the `Store` and an
append-only event log: a Redis stream when distributed, an in-process list when embedded.
A log, not pub/sub, so a reader that subscribes late still sees every event.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from engine.store import Store

RECORD_TTL = 7 * 86400
EVENTS_TTL = 86400
_RECORD = "clipbot:job:"
_CANCEL = "clipbot:cancel:"
_EVENTS = "clipbot:events:"

# Event kinds; the last three end a job.
QUEUED, STARTED, PROGRESS, SUCCEEDED, FAILED, CANCELLED = (
    "queued", "started", "progress", "succeeded", "failed", "cancelled",
)
FINAL_KINDS = frozenset({SUCCEEDED, FAILED, CANCELLED})


@dataclass(frozen=True)
class ProgressEvent:
    """One thing that happened to a job. `data` holds step/total/snapshot for progress,
    `result` for success, `error` (a user-facing message) for failure."""

    kind: str
    job_id: str
    at: float
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.kind in FINAL_KINDS

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "ProgressEvent":
        return cls(**json.loads(raw))


@dataclass
class JobRecord:
    id: str
    task: str
    queue: str
    state: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_KINDS


class EventLog(Protocol):
    def append(self, event: ProgressEvent) -> None: ...
    def read(self, job_id: str, cursor: str, timeout: float) -> tuple[list[ProgressEvent], str]: ...


class MemoryEventLog:
    """Event log for the embedded engine: lists guarded by one condition variable."""

    START = "0"

    def __init__(self) -> None:
        self._logs: dict[str, list[ProgressEvent]] = {}
        self._cond = threading.Condition()

    def append(self, event: ProgressEvent) -> None:
        with self._cond:
            self._logs.setdefault(event.job_id, []).append(event)
            self._cond.notify_all()

    def read(self, job_id: str, cursor: str, timeout: float) -> tuple[list[ProgressEvent], str]:
        start = int(cursor)
        with self._cond:
            self._cond.wait_for(lambda: len(self._logs.get(job_id, ())) > start, timeout=timeout)
            events = self._logs.get(job_id, [])[start:]
        return events, str(start + len(events))

    def forget(self, job_id: str) -> None:
        with self._cond:
            self._logs.pop(job_id, None)


class RedisEventLog:
    """Event log as one Redis stream per job (XADD / XREAD BLOCK), expiring after a day."""

    START = "0-0"

    def __init__(self, client) -> None:
        self._redis = client

    def append(self, event: ProgressEvent) -> None:
        key = _EVENTS + event.job_id
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": event.to_json()}, maxlen=1000, approximate=True)
        pipe.expire(key, EVENTS_TTL)
        pipe.execute()

    def read(self, job_id: str, cursor: str, timeout: float) -> tuple[list[ProgressEvent], str]:
        block_ms = max(1, int(timeout * 1000))
        answer = self._redis.xread({_EVENTS + job_id: cursor}, block=block_ms)
        events = []
        for _stream, entries in answer or ():
            for entry_id, fields in entries:
                cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                events.append(ProgressEvent.from_json(fields[b"e"] if b"e" in fields else fields["e"]))
        return events, cursor


class JobBook:
    """Reads and writes job records and events; shared by the submitting side and workers."""

    def __init__(self, store: Store, events: EventLog) -> None:
        self.store = store
        self.events = events

    def create(self, record: JobRecord) -> None:
        self.store.set(_RECORD + record.id, asdict(record), ttl=RECORD_TTL)
        self.emit(record.id, QUEUED)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.store.get(_RECORD + job_id)
        return JobRecord(**raw) if raw else None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        record = self.get(job_id) or JobRecord(id=job_id, task="?", queue="?")
        for name, value in changes.items():
            setattr(record, name, value)
        self.store.set(_RECORD + job_id, asdict(record), ttl=RECORD_TTL)
        return record

    def emit(self, job_id: str, kind: str, **data: Any) -> ProgressEvent:
        event = ProgressEvent(kind=kind, job_id=job_id, at=time.time(), data=data)
        self.events.append(event)
        return event

    def request_cancel(self, job_id: str) -> None:
        self.store.set(_CANCEL + job_id, True, ttl=RECORD_TTL)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.store.get(_CANCEL + job_id))
