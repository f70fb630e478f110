"""Job records and progress events.

Every job has a record (state, timings, attempts, its arguments, small JSON result) in the
`Store` and an append-only event log: a Redis stream when distributed, an in-process list when
embedded. A log, not pub/sub, so a reader that subscribes late still sees every event.
Finished jobs are forgotten `finished_ttl` seconds after they end, records and logs alike,
so a long-running process does not grow; what a job leaves behind (its uploads, its checkpoint,
its cancel flag) goes as it ends.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

from engine.blobs import discard
from engine.store import Store, reachable

if TYPE_CHECKING:
    from engine.archive import JobArchive
    from engine.blobs import BlobStore
    from engine.checkpoints import Checkpoints

log = logging.getLogger(__name__)

RECORD_TTL = 7 * 86400  # a job that never ends (its whole worker host vanished) goes after a week
_RECORD = "clipbot:job:"
_CANCEL = "clipbot:cancel:"
_TASK = "clipbot:task:"  # what workers declared about a task (its input kwargs), for the submitting side
EVENTS = "clipbot:events:"

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
    worker: str | None = None  # the process running the current attempt ("node/pid")
    kwargs: dict[str, Any] = field(default_factory=dict)  # so a reaper can queue the job again
    inputs: list[str] = field(default_factory=list)  # blob keys deleted when the job ends
    extra: dict[str, Any] = field(default_factory=dict)  # the submitter's own notes (where to answer)
    result: Any = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_KINDS

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "JobRecord":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


class EventLog(Protocol):
    def append(self, event: ProgressEvent) -> None: ...
    def events(self, job_id: str) -> list[ProgressEvent]: ...
    def expire(self, job_id: str, ttl: float) -> None: ...


class MemoryEventLog:
    """Event log for the embedded engine. Followers subscribe with a callback that is called
    (under the lock, so in order) for every new event; it must not block."""

    def __init__(self) -> None:
        self._logs: dict[str, list[ProgressEvent]] = {}
        self._expires: dict[str, float] = {}  # job id -> monotonic time its log goes
        self._listeners: dict[str, list[Callable[[ProgressEvent], None]]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def append(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        with self._lock:
            if event.job_id not in self._logs:
                self._expires[event.job_id] = now + RECORD_TTL
            self._logs.setdefault(event.job_id, []).append(event)
            for listener in self._listeners.get(event.job_id, ()):
                listener(event)
            if now >= self._next_sweep:
                self._sweep(now)

    def events(self, job_id: str) -> list[ProgressEvent]:
        with self._lock:
            return list(self._logs.get(job_id, ()))

    def expire(self, job_id: str, ttl: float) -> None:
        with self._lock:
            if job_id in self._logs:
                self._expires[job_id] = time.monotonic() + ttl

    def subscribe(self, job_id: str, listener: Callable[[ProgressEvent], None]
                  ) -> tuple[list[ProgressEvent], Callable[[], None]]:
        """The events so far and a function that unsubscribes; `listener` gets every later one."""
        with self._lock:
            self._listeners.setdefault(job_id, []).append(listener)
            past = list(self._logs.get(job_id, ()))

        def unsubscribe() -> None:
            with self._lock:
                listeners = self._listeners.get(job_id, [])
                if listener in listeners:
                    listeners.remove(listener)
                if not listeners:
                    self._listeners.pop(job_id, None)

        return past, unsubscribe

    def __len__(self) -> int:
        return len(self._logs)

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + 1.0  # at most once a second: the scan is O(jobs)
        for job_id in [j for j, at in self._expires.items() if at <= now]:
            del self._expires[job_id]
            self._logs.pop(job_id, None)


class RedisEventLog:
    """Event log as one Redis stream per job (XADD); followers read it through `engine.feed`."""

    def __init__(self, client) -> None:
        self._redis = client

    @reachable
    def append(self, event: ProgressEvent) -> None:
        key = EVENTS + event.job_id
        pipe = self._redis.pipeline(transaction=False)
        pipe.xadd(key, {"e": event.to_json()}, maxlen=1000, approximate=True)
        if event.kind == QUEUED and not event.data:
            pipe.expire(key, RECORD_TTL)
        pipe.execute()

    @reachable
    def events(self, job_id: str) -> list[ProgressEvent]:
        return [ProgressEvent.from_json(fields[b"e"]) for _id, fields in self._redis.xrange(EVENTS + job_id)]

    @reachable
    def expire(self, job_id: str, ttl: float) -> None:
        self._redis.expire(EVENTS + job_id, max(1, int(ttl)))


class JobBook:
    """Reads and writes job records and events; shared by the submitting side and workers.
    `blobs`, when given, is where a job's input blobs are deleted as it ends; `checkpoints`
    (`engine.checkpoints.Checkpoints`), where its checkpoint is; `archive` (`engine.archive`, the
    embedded engine's), where finished records and their results' blobs outlive the process."""

    def __init__(self, store: Store, events: EventLog, *, finished_ttl: float = 3600, blobs: "BlobStore | None" = None,
                 checkpoints: "Checkpoints | None" = None, archive: "JobArchive | None" = None) -> None:
        self.store = store
        self.events = events
        self.finished_ttl = finished_ttl
        self.blobs = blobs
        self.checkpoints = checkpoints
        self.archive = archive

    @staticmethod
    def record_key(job_id: str) -> str:
        return _RECORD + job_id

    def create(self, record: JobRecord) -> None:
        self.store.set(_RECORD + record.id, asdict(record), ttl=RECORD_TTL)
        self.emit(record.id, QUEUED)

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.store.get(_RECORD + job_id)
        if not raw and self.archive is not None:
            raw = self.archive.record(job_id)
        return JobRecord.from_dict(raw) if raw else None

    def update(self, job_id: str, *, ttl: float = RECORD_TTL, **changes: Any) -> JobRecord:
        record = self.get(job_id) or JobRecord(id=job_id, task="?", queue="?")
        for name, value in changes.items():
            setattr(record, name, value)
        self.store.set(_RECORD + job_id, asdict(record), ttl=max(1, int(ttl)))
        return record

    def emit(self, job_id: str, kind: str, **data: Any) -> ProgressEvent:
        event = ProgressEvent(kind=kind, job_id=job_id, at=time.time(), data=data)
        self.events.append(event)
        return event

    def finish(self, job_id: str, state: str, *, result: Any = None, error: str | None = None) -> JobRecord:
        """End a job: final record and event, both kept `finished_ttl` more seconds; inputs deleted."""
        record = self.update(job_id, ttl=self.finished_ttl, state=state, finished_at=time.time(), result=result,
                             error=error)
        if self.blobs is not None:  # before the final event: whoever hears it finds the uploads gone
            discard(self.blobs, record.inputs, f"an input of job {job_id}")
        if self.checkpoints is not None:  # an ended job (cancelled, failed too) never resumes
            try:
                self.checkpoints.delete(job_id)
            except Exception:
                log.warning("could not delete the checkpoint of job %s; it expires with its TTL", job_id,
                            exc_info=True)
        if self.archive is not None and self.blobs is not None:
            self.archive.keep(asdict(record), self.blobs)
        self.emit(job_id, state, result=result, error=error)
        self.events.expire(job_id, self.finished_ttl)
        self.store.delete(_CANCEL + job_id)
        return record

    def forget(self, job_id: str) -> None:
        """Delete a finished job's record and the blobs its result names (its Delete button)."""
        from engine.archive import named_blobs

        record = self.get(job_id)
        if record is not None and self.blobs is not None:
            discard(self.blobs, named_blobs(record.result), f"a result of job {job_id}")
        self.store.delete(_RECORD + job_id)
        if self.archive is not None:
            self.archive.forget(job_id)

    def request_cancel(self, job_id: str) -> None:
        self.store.set(_CANCEL + job_id, True, ttl=RECORD_TTL)

    def cancel_requested(self, job_id: str) -> bool:
        return bool(self.store.get(_CANCEL + job_id))

    # ---- what workers declare about tasks ------------------------------------------------
    def declare_task(self, name: str, inputs: Iterable[str]) -> None:
        """Workers say which kwargs of task `name` carry upload blob keys, so the submitting side
        (which never imports task modules) records a job's inputs as it submits it."""
        self.store.set(_TASK + name, {"inputs": list(inputs)})

    def declared_inputs(self, name: str) -> list[str]:
        declared = self.store.get(_TASK + name)
        return list(declared.get("inputs", ())) if declared else []
