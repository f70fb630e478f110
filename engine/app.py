"""The engine: a Celery app plus the state around it (blobs, job records, events, workers).

With a broker URL it is distributed: Redis carries tasks, records, events and blobs, and
`clipbot worker` processes run the tasks. Without one it is embedded: the same tasks go
through Celery in-process (memory transport and a worker thread), so there is one code path.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, AsyncIterator, Iterable

from celery import Celery

from engine.blobs import BlobStore, MemoryBlobStore, RedisBlobStore
from engine.errors import JobCancelled, JobFailed, UserError, WorkerUnavailable
from engine.jobs import (
    CANCELLED,
    FAILED,
    QUEUED,
    STARTED,
    SUCCEEDED,
    JobBook,
    JobRecord,
    MemoryEventLog,
    ProgressEvent,
    RedisEventLog,
)
from engine.store import RedisStore, SqliteStore, Store
from engine.tasks import CORE_QUEUES, JobContext, Queue, TaskInfo, tasks_in

log = logging.getLogger(__name__)

_WORKERS = "clipbot:workers"
HEARTBEAT_EVERY = 5.0
HEARTBEAT_STALE = 20.0
# How long one blocking read of the event log may wait before deadlines are re-checked.
_POLL = 1.0


def _celery_config(settings: Any) -> dict[str, Any]:
    conf: dict[str, Any] = dict(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in job records; images never leave the blob store
        task_acks_late=True,  # a task is acked after it ran, so a killed worker does not lose it
        task_reject_on_worker_lost=True,  # ...and a killed child puts the message back in the queue
        worker_prefetch_multiplier=1,  # long GPU jobs: do not hoard messages another worker could run
        task_default_queue="gpu",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    if settings.broker_url:
        conf["broker_url"] = settings.broker_url
        conf["broker_transport_options"] = {"visibility_timeout": settings.visibility_timeout}
    else:
        conf["broker_url"] = "memory://localhost/"
        conf["result_backend"] = "cache+memory://"
        # The memory transport polls; the 1 s default would add ~1 s to every job.
        conf["broker_transport_options"] = {"polling_interval": 0.005}
    return conf


class Engine:
    """Submit jobs, follow their events, cancel them; run them when this process is a worker."""

    def __init__(self, settings: Any, *, celery: Celery, blobs: BlobStore, store: Store, book: JobBook,
                 redis: Any = None, queues: Iterable[Queue] = CORE_QUEUES,
                 plugin_settings: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.queues: dict[str, Queue] = {q.name: q for q in queues}
        self.plugin_settings: dict[str, Any] = dict(plugin_settings or {})
        self.celery = celery
        self.blobs = blobs
        self.store = store
        self.book = book
        self.redis = redis
        self.hostname = f"clipbot@{socket.gethostname()}.{os.getpid()}"
        self._instance = uuid.uuid4().hex[:12]
        self._embedded_worker: Any = None
        self._embedded_thread: threading.Thread | None = None
        celery.clipbot_engine = self  # tasks find their engine through their app

    @property
    def embedded(self) -> bool:
        return self.redis is None

    def queue_name(self, queue: str) -> str:
        """The broker queue for a logical queue. kombu's memory transport shares queues across
        every connection in a process, so each embedded engine gets queues of its own."""
        return f"{queue}.{self._instance}" if self.embedded else queue

    # ---- tasks -------------------------------------------------------------------------
    def register_task_modules(self, modules: Iterable[str]) -> list[TaskInfo]:
        """Import task modules (heavy: they may import torch) and bind their tasks to Celery."""
        infos = []
        for name in modules:
            for info in tasks_in(importlib.import_module(name)):
                if info.name not in self.celery.tasks:
                    self._bind(info)
                infos.append(info)
        return infos

    def _bind(self, info: TaskInfo) -> None:
        if info.queue not in self.queues:
            raise ValueError(f"task {info.name} uses the queue {info.queue!r}, which no plugin declares "
                             f"(declared: {', '.join(self.queues)}); declare it with the clipbot_queues hook")
        engine = self

        def run(self_task: Any, job_id: str, **kwargs: Any) -> Any:
            return engine.run_job(info, job_id, kwargs)

        run.__name__ = info.name.replace(".", "_")
        # shared=False: a shared task would be copied onto every Celery app in the process,
        # still bound to this engine.
        self.celery.task(run, name=info.name, bind=True, queue=self.queue_name(info.queue), shared=False)

    def run_job(self, info: TaskInfo, job_id: str, kwargs: dict[str, Any]) -> Any:
        """Execute one delivery of a job: record it, run the function, record the outcome."""
        record = self.book.get(job_id) or JobRecord(id=job_id, task=info.name, queue=info.queue)
        if record.finished:  # a redelivery of a job that already ended: nothing to do
            return record.result
        attempt = record.attempts + 1
        if self.book.cancel_requested(job_id):
            return self._finish(job_id, CANCELLED, error="The job was cancelled.")
        self.book.update(job_id, state=STARTED, started_at=time.time(), attempts=attempt, worker=self.hostname)
        self.book.emit(job_id, STARTED, attempt=attempt, worker=self.hostname)
        try:
            result = info.fn(JobContext(self, job_id, attempt), **kwargs)
        except JobCancelled as exc:
            return self._finish(job_id, CANCELLED, error=str(exc))
        except UserError as exc:
            return self._finish(job_id, FAILED, error=str(exc))
        except Exception:
            log.exception("job %s (%s) crashed", job_id, info.name)
            return self._finish(
                job_id, FAILED, error=f"Something went wrong on the worker (job {job_id[:8]}); it has been logged."
            )
        return self._finish(job_id, SUCCEEDED, result=result)

    def _finish(self, job_id: str, state: str, *, result: Any = None, error: str | None = None) -> Any:
        self.book.update(job_id, state=state, finished_at=time.time(), result=result, error=error)
        self.book.emit(job_id, state, result=result, error=error)
        return result

    # ---- submitting and following --------------------------------------------------------
    def submit(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu") -> str:
        """Queue `task` with JSON `kwargs`; returns the job id. Refuses when no worker is online."""
        if queue not in self.queues:
            raise ValueError(f"unknown queue {queue!r} (declared: {', '.join(self.queues)})")
        self.require_worker(queue)
        job_id = uuid.uuid4().hex
        self.book.create(JobRecord(id=job_id, task=task, queue=queue))
        self.celery.send_task(task, args=(job_id,), kwargs=kwargs, task_id=job_id, queue=self.queue_name(queue))
        return job_id

    def cancel(self, job_id: str) -> None:
        """Ask a job to stop: a queued one never starts, a running one stops at its next check."""
        self.book.request_cancel(job_id)
        self.celery.control.revoke(job_id)
        record = self.book.get(job_id)
        if record and record.state == QUEUED:
            self._finish(job_id, CANCELLED, error="The job was cancelled.")

    async def follow(self, job_id: str) -> AsyncIterator[ProgressEvent]:
        """Yield a job's events until it ends. Raise a user-facing error when it fails, is
        cancelled, waits for a worker longer than `queue_timeout`, or runs past `job_timeout`."""
        started = time.monotonic()
        queue_deadline = started + self.settings.queue_timeout
        job_deadline = started + self.settings.job_timeout
        cursor = self.book.events.START  # type: ignore[attr-defined]
        running = False
        while True:
            now = time.monotonic()
            if now >= job_deadline:
                self.cancel(job_id)
                raise JobFailed(f"The job took longer than {self.settings.job_timeout:.0f} s and was stopped.")
            if not running and now >= queue_deadline:
                self.cancel(job_id)
                raise WorkerUnavailable(
                    f"No worker picked up the job within {self.settings.queue_timeout:.0f} s; it was cancelled. "
                    "The workers may be busy or down: try again later, or ask an admin."
                )
            deadline = job_deadline if running else min(queue_deadline, job_deadline)
            batch, cursor = await asyncio.to_thread(
                self.book.events.read, job_id, cursor, min(_POLL, deadline - now)
            )
            for event in batch:
                running = running or event.kind == STARTED
                yield event
                if event.kind == FAILED:
                    raise JobFailed(event.data.get("error") or "The job failed.")
                if event.kind == CANCELLED:
                    raise JobCancelled(event.data.get("error") or "The job was cancelled.")
                if event.final:
                    return

    async def run(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu") -> Any:
        """Submit and wait for the result, ignoring progress events."""
        job_id = await asyncio.to_thread(self.submit, task, kwargs, queue=queue)
        result = None
        async for event in self.follow(job_id):
            if event.kind == SUCCEEDED:
                result = event.data.get("result")
        return result

    # ---- workers -------------------------------------------------------------------------
    def require_worker(self, queue: str) -> None:
        if self.embedded:
            if self._embedded_thread is None or not self._embedded_thread.is_alive():
                raise WorkerUnavailable("The embedded engine is not running.")
            return
        if not self.live_workers(queue):
            raise WorkerUnavailable(
                f"No clipbot worker is online for the '{queue}' queue, so I can't run this right now. "
                "Ask an admin to start one with `clipbot worker`."
            )

    def live_workers(self, queue: str | None = None) -> list[dict[str, Any]]:
        if self.embedded:
            return [{"hostname": self.hostname, "queues": list(self.queues)}] if self._embedded_thread else []
        now = time.time()
        workers = [json.loads(v) for v in self.redis.hgetall(_WORKERS).values()]
        return [
            w for w in workers
            if now - w["at"] < HEARTBEAT_STALE and (queue is None or queue in w["queues"])
        ]

    def heartbeat(self, queues: list[str], pid: int, *, gone: bool = False) -> None:
        """Announce (or withdraw) this worker; readers ignore announcements older than 20 s."""
        if gone:
            self.redis.hdel(_WORKERS, self.hostname)
        else:
            info = {"hostname": self.hostname, "queues": queues, "pid": pid, "at": time.time()}
            self.redis.hset(_WORKERS, self.hostname, json.dumps(info))

    def start_embedded(self, task_modules: Iterable[str]) -> None:
        """Start the in-process worker thread (embedded mode only)."""
        if not self.embedded:
            raise RuntimeError("start_embedded is for the embedded engine")
        if self._embedded_thread is not None:
            return
        from celery.worker import WorkController

        self.register_task_modules(task_modules)
        ready = threading.Event()
        self.celery.finalize()
        worker = WorkController(
            app=self.celery,
            hostname=f"embedded-{self._instance}@{socket.gethostname()}",
            pool="solo",
            concurrency=1,
            queues=[self.queue_name(q) for q in self.queues],
            ready_callback=lambda consumer: ready.set(),
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel=self.settings.log_level,
        )

        def serve() -> None:
            # Celery runs tasks against the thread's *current* app; with several engines in
            # one process (tests, tools) the worker thread must name its own.
            self.celery.set_current()
            worker.start()

        thread = threading.Thread(target=serve, name="clipbot-embedded-worker", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the embedded worker did not start within 30 s")
        self._embedded_worker, self._embedded_thread = worker, thread

    def stop(self) -> None:
        if self._embedded_worker is not None:
            self._embedded_worker.stop(in_sighandler=False)
            assert self._embedded_thread is not None
            self._embedded_thread.join(10)
            self._embedded_worker = self._embedded_thread = None


def create_engine(settings: Any, *, queues: Iterable[Queue] = CORE_QUEUES,
                  plugin_settings: dict[str, Any] | None = None) -> Engine:
    """Build the engine the settings describe (embedded when no broker URL is set), serving the
    declared `queues`; `plugin_settings` are handed to tasks (`job.plugin_settings(name)`)."""
    extra = {"queues": list(queues), "plugin_settings": plugin_settings}
    celery = Celery("clipbot", set_as_current=False)
    celery.conf.update(_celery_config(settings))
    redis_url = settings.state_redis_url if settings.broker_url else None
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, health_check_interval=30)
        store: Store = RedisStore(client)
        book = JobBook(store, RedisEventLog(client))
        return Engine(settings, celery=celery, blobs=RedisBlobStore(client, settings.blob_ttl), store=store,
                      book=book, redis=client, **extra)
    # Settings such as label sets persist in a file; job records live in memory with the jobs.
    store = SqliteStore(settings.data_dir / "state.sqlite3")
    book = JobBook(SqliteStore(":memory:"), MemoryEventLog())
    return Engine(settings, celery=celery, blobs=MemoryBlobStore(settings.blob_ttl), store=store, book=book,
                  **extra)
