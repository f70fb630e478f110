"""What plugins see of the engine: a narrow, typed face instead of the whole `Engine`.

Handlers get it as `ctx.engine`, plugin hooks as `app.face`, and a running task's `JobContext`
is one too (plus its job's own progress, cancel and checkpoints). It offers the state store,
the blob store, submit/run/follow/cancel, a job's record, named pending queues
(`engine.pending`), this process's image index and each plugin's settings; no Celery, no job
book, no Redis client. Mechanisms several features need (a batch queue, the index cache,
throttled progress) live behind it in engine/, so a plugin never branches on the deployment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

if TYPE_CHECKING:
    from engine.app import Engine
    from engine.blobs import BlobStore
    from engine.index import ImageIndex
    from engine.jobs import JobRecord, ProgressEvent
    from engine.pending import PendingQueue
    from engine.quotas import Requester
    from engine.settings import EngineSettings
    from engine.store import Store

__all__ = ["EngineFace"]


class EngineFace:
    """The engine as a plugin sees it (handlers, hooks and tasks alike)."""

    def __init__(self, engine: "Engine", requester: "Requester | None" = None) -> None:
        self._engine = engine
        self.requester = requester  # who asked (a handler's face): their jobs count against their quotas

    def for_requester(self, requester: "Requester") -> "EngineFace":
        """This face, submitting on behalf of `requester` (quotas, fair turns)."""
        return EngineFace(self._engine, requester)

    @property
    def settings(self) -> "EngineSettings":
        """The core settings (`engine.settings.EngineSettings`: models, limits, timeouts, data dir)."""
        return self._engine.settings

    @property
    def store(self) -> "Store":
        """Small JSON state shared by every process (`engine.store.Store`)."""
        return self._engine.store

    @property
    def blobs(self) -> "BlobStore":
        """Image bytes by key (`engine.blobs.BlobStore`)."""
        return self._engine.blobs

    def plugin_settings(self, name: str) -> Any:
        """The settings object of plugin `name` (its `clipbot_settings` hook)."""
        try:
            return self._engine.plugin_settings[name]
        except KeyError:
            raise KeyError(f"plugin {name!r} has no settings (not loaded, or no clipbot_settings hook)") from None

    # ---- jobs ----------------------------------------------------------------------------
    def submit(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu", record_extra: dict | None = None,
               input_blobs: Iterable[str] = ()) -> str:
        """Queue `task` with JSON `kwargs`; returns the job id (`engine.app.Engine.submit`). A
        handler's face submits for its requester: over a limit, `engine.quotas.QuotaExceeded`."""
        return self._engine.submit(task, kwargs, queue=queue, record_extra=record_extra, input_blobs=input_blobs,
                                   requester=self.requester)

    async def run(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu", **submit: Any) -> Any:
        """Submit and wait for the JSON result, ignoring progress events."""
        return await self._engine.run(task, kwargs, queue=queue, requester=self.requester, **submit)

    def follow(self, job_id: str, *, job_timeout: float | None = None,
               queue_timeout: float | None = None) -> AsyncIterator["ProgressEvent"]:
        """A job's events until it ends (`engine.app.Engine.follow`)."""
        return self._engine.follow(job_id, job_timeout=job_timeout, queue_timeout=queue_timeout)

    def cancel(self, job_id: str) -> bool:
        return self._engine.cancel(job_id)

    def job(self, job_id: str) -> "JobRecord | None":
        """A job's record (state, kwargs, result), or None once it expired."""
        return self._engine.book.get(job_id)

    def forget_job(self, job_id: str) -> None:
        """Delete a finished job's record and the files (blobs) its result names, now."""
        self._engine.book.forget(job_id)

    # ---- shared mechanisms -----------------------------------------------------------------
    def pending(self, name: str) -> "PendingQueue":
        """The pending queue `name` (`engine.pending`): items waiting for one batch task at a time."""
        from engine.pending import pending_queue

        return pending_queue(self._engine, name)

    def index(self) -> "ImageIndex":
        """This process's image index (opened once per process; needs numpy: tasks, not handlers)."""
        from engine.index import process_index

        return process_index(self.settings)
