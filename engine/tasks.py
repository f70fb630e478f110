"""How plugins declare engine tasks, and what a running task may do.

A task is a plain function `fn(job: JobContext, **kwargs) -> JSON-able result`, marked with
`@task(name, queue=...)`. The engine binds it to Celery when a worker starts; the function
itself knows nothing about Celery, so pipelines stay testable without a worker.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from engine.checkpoints import checkpoints_for
from engine.errors import JobCancelled
from engine.face import EngineFace
from engine.jobs import PROGRESS
from engine.progress import MIN_GAP_S, ThrottledProgress

if TYPE_CHECKING:
    from engine.app import Engine

_MARK = "__clipbot_task__"
_QUEUE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


@dataclass(frozen=True)
class Queue:
    """A kind of work with its own broker queue, declared by a plugin (`clipbot_queues`)."""

    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not _QUEUE_NAME.match(self.name):
            raise ValueError(f"invalid queue name {self.name!r}: lowercase letters, digits and - only")


# Declared by the core (bot.builtin); plugins add their own.
CORE_QUEUES = (
    Queue("gpu", "quick model work: /whatis, search queries, indexing (seconds)"),
    Queue("io", "network work: downloads, posting"),
)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    queue: str
    fn: Callable[..., Any]
    inputs: tuple[str, ...] = ()  # kwargs holding blob keys (or lists of them) that the job consumes


def task(name: str, *, queue: str = "gpu", inputs: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Mark `fn` as the engine task `name` on `queue` (a declared queue: "gpu" for quick model
    work, "io" for network, or one the plugin declares with `clipbot_queues`). `inputs` names
    the kwargs that carry upload blob keys: those blobs are deleted when the job ends (outputs
    and snapshots keep their TTL)."""
    if not _QUEUE_NAME.match(queue):
        raise ValueError(f"invalid queue name {queue!r}")

    def mark(fn: Callable) -> Callable:
        setattr(fn, _MARK, TaskInfo(name=name, queue=queue, fn=fn, inputs=tuple(inputs)))
        return fn

    return mark


def blob_keys(names: Iterable[str], kwargs: dict[str, Any]) -> list[str]:
    """The blob keys in the kwargs `names` (a key, or a list of them): a task's declared inputs."""
    keys: list[str] = []
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, str):
            keys.append(value)
        elif isinstance(value, (list, tuple)):
            keys.extend(v for v in value if isinstance(v, str))
    return keys


def tasks_in(module: Any) -> list[TaskInfo]:
    """The tasks a module defines, in definition order."""
    return [getattr(v, _MARK) for v in vars(module).values() if callable(v) and hasattr(v, _MARK)]


class JobContext(EngineFace):
    """Handed to a running task: the engine face (store, blobs, submit, index, pending queues,
    settings) plus this job's id, attempt, progress, cancel and checkpoints."""

    def __init__(self, engine: "Engine", job_id: str, attempt: int) -> None:
        super().__init__(engine)
        self.job_id = job_id
        self.attempt = attempt
        self._last_cancel_check = 0.0

    def cancelled(self) -> bool:
        return self._engine.book.cancel_requested(self.job_id)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if someone cancelled this job; cheap enough to call every step."""
        now = time.monotonic()
        if now - self._last_cancel_check < 0.2:
            return
        self._last_cancel_check = now
        if self.cancelled():
            raise JobCancelled("The job was cancelled.")

    def progress(self, step: int, total: int, *, message: str = "", snapshot: bytes | None = None,
                 **extra: Any) -> None:
        """Report progress; a snapshot image is stored as a blob and its key sent in the event.
        `extra` is more JSON for the event (e.g. eta, loss)."""
        self.check_cancelled()
        data: dict[str, Any] = {**extra, "step": step, "total": total, "message": message}
        if snapshot is not None:
            data["snapshot"] = self.blobs.put(snapshot)
        self._emit_progress(**data)

    def throttled_progress(self, snapshots: list[dict] | None = None, *,
                           min_gap: float = MIN_GAP_S) -> ThrottledProgress:
        """Progress sent from a background thread, so a step loop never waits for the event store:
        plain updates coalesce (one per `min_gap` s), snapshots all go, in order. `snapshots`: the
        ones an earlier attempt sent (a resumed run keeps them). Close it when the loop ends."""
        return ThrottledProgress(self._emit_progress, self.blobs, list(snapshots or ()), min_gap=min_gap,
                                 what=f"job {self.job_id}")

    def _emit_progress(self, **data: Any) -> None:
        self._engine.book.emit(self.job_id, PROGRESS, **data)

    # ---- checkpoints (engine.checkpoints): resumable state keyed by this job's id -------------
    def save_checkpoint(self, data: bytes, **meta: Any) -> None:
        """Store `data` as this job's checkpoint (replacing the last); a redelivery can load it."""
        checkpoints_for(self._engine).save(self.job_id, data, **meta)

    def load_checkpoint(self) -> bytes | None:
        """The last checkpoint an earlier attempt of this job saved, or None."""
        return checkpoints_for(self._engine).load(self.job_id)

    def delete_checkpoint(self) -> None:
        checkpoints_for(self._engine).delete(self.job_id)
