"""The engine, client side: submit jobs, follow their events, cancel them.

With a broker URL it is distributed: Redis carries tasks, records, events and blobs, and
`clipbot worker` processes run the tasks (`engine.worker`). Without one it is embedded: the
same tasks go through Celery in-process (memory transport and a worker thread started by
`start_embedded`), so there is one code path. The bot process only needs this module.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterable

from celery import Celery

from engine.archive import ArchivedBlobs, JobArchive
from engine.blobs import BlobStore, MemoryBlobStore, RedisBlobStore
from engine.checkpoints import Checkpoints
from engine.errors import BackendUnavailable, JobCancelled, JobFailed, WorkerUnavailable
from engine.fair import FairQueue, backlog_key
from engine.feed import MemoryFeed, RedisFeed
from engine.health import WORKERS, stale_after
from engine.observe import metrics
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
from engine.quotas import QuotaExceeded, Quotas, Requester
from engine.store import RedisStore, SqliteStore, Store, reachable, redis_where
from engine.tasks import CORE_QUEUES, Queue, blob_keys

if TYPE_CHECKING:
    from redis import Redis

    from engine.settings import EngineSettings
    from engine.worker import EmbeddedWorker

_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")  # kombu's Redis priority lists

# A follower re-reads the job record at least this often, so a lost event cannot strand it.
_RECHECK = 30.0


def _celery_config(settings: EngineSettings) -> dict[str, Any]:
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
    """Submit jobs, follow their events, cancel them. Workers (`engine.worker`) run them."""

    def __init__(self, settings: EngineSettings, *, celery: Celery, blobs: BlobStore, store: Store, book: JobBook,
                 redis: "Redis | None" = None, queues: Iterable[Queue] = CORE_QUEUES,
                 plugin_settings: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.queues: dict[str, Queue] = {q.name: q for q in queues}
        self.plugin_settings: dict[str, Any] = dict(plugin_settings or {})
        self.celery = celery
        self.blobs = blobs
        self.store = store
        self.book = book
        self.redis = redis
        self._redis = redis  # what @reachable names in its "can't reach Redis" message
        self._instance = uuid.uuid4().hex[:12]
        self._embedded: "EmbeddedWorker | None" = None  # once started
        self._feeds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisFeed] = weakref.WeakKeyDictionary()
        self._memory_feed = MemoryFeed(book.events, book.get) if isinstance(book.events, MemoryEventLog) else None
        self.quotas = Quotas(settings, store, book, redis)
        self._fair: dict[str, FairQueue] = {}

    @property
    def embedded(self) -> bool:
        return self.redis is None

    def queue_name(self, queue: str) -> str:
        """The broker queue for a logical queue. kombu's memory transport shares queues across
        every connection in a process, so each embedded engine gets queues of its own."""
        return f"{queue}.{self._instance}" if self.embedded else queue

    # ---- submitting and following --------------------------------------------------------
    def submit(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu", record_extra: dict | None = None,
               input_blobs: Iterable[str] = (), requester: Requester | None = None) -> str:
        """Queue `task` with JSON `kwargs`; returns the job id. Refuses when no worker is online,
        and when `requester` (who asked, from chat) is over a limit (`engine.quotas`).
        `input_blobs` (and the task's declared inputs) are deleted when the job ends, also when it
        is cancelled before any worker took it. A fair queue holds the job back in its
        requester's turn (`engine.fair`)."""
        if queue not in self.queues:
            raise ValueError(f"unknown queue {queue!r} (declared: {', '.join(self.queues)})")
        submitted = metrics().submitted
        try:
            self.require_worker(queue)
            long = queue in self.settings.long_queues
            if requester is not None:
                self.quotas.admit(requester, long=long)
            job_id = uuid.uuid4().hex
            inputs = list(dict.fromkeys([*input_blobs, *blob_keys(self.book.declared_inputs(task), kwargs)]))
            extra = dict(record_extra or {})
            if requester is not None:
                extra["requester"] = requester.to_json()
            self.book.create(JobRecord(id=job_id, task=task, queue=queue, kwargs=kwargs, inputs=inputs, extra=extra))
            if requester is not None:
                self.quotas.started(requester, job_id, long=long)
            self._enqueue(job_id, task, kwargs, queue, requester)
        except (WorkerUnavailable, BackendUnavailable, QuotaExceeded):
            submitted.labels(task, "refused").inc()
            raise
        submitted.labels(task, "queued").inc()
        return job_id

    def _enqueue(self, job_id: str, task: str, kwargs: dict[str, Any], queue: str,
                 requester: Requester | None) -> None:
        fair = self.fair(queue)
        if fair is None:
            self._publish(job_id, task, kwargs, queue)
        else:
            fair.push(job_id, requester.owner if requester is not None else "engine")
            self.pump(queue)

    def fair(self, queue: str) -> FairQueue | None:
        """The fair queue in front of `queue`'s broker queue; None when it is served first come,
        first served (not a fair queue, or the embedded engine: one user, one process)."""
        if self.redis is None or queue not in self.settings.fair_queues:
            return None
        if queue not in self._fair:
            self._fair[queue] = FairQueue(self.redis, self.queue_name(queue), ahead=self.settings.fair_ahead,
                                          publish=lambda job_id: self._publish_held(job_id, queue))
        return self._fair[queue]

    def pump(self, queue: str) -> int:
        """Hand held-back jobs of a fair queue to the broker as room frees; returns how many."""
        fair = self.fair(queue)
        return fair.pump() if fair is not None else 0

    def _publish_held(self, job_id: str, queue: str) -> bool:
        record = self.book.get(job_id)
        if record is None or record.finished:
            return False  # cancelled (or expired) while it waited: it takes no place
        self._publish(job_id, record.task, record.kwargs, queue)
        return True

    def queue_position(self, job_id: str, queue: str) -> int | None:
        """1 = next to run. None when unknown (the embedded engine) or no longer waiting."""
        if self.redis is None:
            return None
        fair = self.fair(queue)
        held = fair.position(job_id) if fair is not None else None
        if held is not None:
            return held
        # kombu's Redis transport LPUSHes and BRPOPs: the next message is at the right end.
        needle = job_id.encode()
        for position, raw in enumerate(reversed(self.redis.lrange(self.queue_name(queue), 0, -1)), start=1):
            if needle in raw:
                return position
        return None

    def queue_depth(self, queue: str) -> int | None:
        """Jobs waiting for a worker in `queue`: in the broker (kombu keeps a queue, and one list
        per priority step, as Redis lists) or held back by a fair queue; None when embedded."""
        if self.redis is None:
            return None
        name = self.queue_name(queue)
        pipe = self.redis.pipeline(transaction=False)
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(name + suffix)
        pipe.llen(backlog_key(name))  # a fair queue's held-back jobs (engine.fair); empty otherwise
        return int(sum(pipe.execute()))

    def _publish(self, job_id: str, task: str, kwargs: dict[str, Any], queue: str) -> None:
        from kombu.exceptions import OperationalError

        try:
            self.celery.send_task(task, args=(job_id,), kwargs=kwargs, task_id=job_id, queue=self.queue_name(queue))
        except OperationalError as exc:
            if self.embedded:
                raise
            self.book.update(job_id, ttl=self.book.finished_ttl, state=FAILED, error="not queued: Redis unreachable")
            raise BackendUnavailable(redis_where(self.redis), exc) from exc

    def cancel(self, job_id: str) -> bool:
        """Ask a job to stop: a queued one never starts, a running one stops at its next check.
        False when there is nothing to stop (no such job, or it already ended)."""
        record = self.book.get(job_id)
        if record is None or record.finished:
            return False
        self.book.request_cancel(job_id)
        self.celery.control.revoke(job_id)
        fair = self.fair(record.queue)
        if fair is not None:
            fair.remove(job_id)
        if record.state == QUEUED:
            self.book.finish(job_id, CANCELLED, error="The job was cancelled.")
        return True

    async def follow(self, job_id: str, *, job_timeout: float | None = None,
                     queue_timeout: float | None = None) -> AsyncIterator[ProgressEvent]:
        """Yield a job's events until it ends. Raise a user-facing error when it fails, is
        cancelled, waits for a worker longer than `queue_timeout`, or runs past `job_timeout`
        (None: the settings' values; math.inf: no limit, for long jobs that bound themselves).

        Deadlines count from the job's own timestamps and are confirmed against its record,
        so a follower that reads late (a busy event loop, Redis restarting) never times out a
        job that did start. One reader serves every follower of the loop (`engine.feed`)."""
        limits = (self.settings.job_timeout if job_timeout is None else job_timeout,
                  self.settings.queue_timeout if queue_timeout is None else queue_timeout)
        async with self._feed().follow(job_id) as events:
            created = time.time()  # until the job's own "queued" event says when it was created
            started, floor = False, 0.0
            while True:
                event = await events.get(self._next_check(created, started, floor, limits))
                if event is None:
                    event, started = await self._check_deadlines(job_id, created, started, limits)
                    floor = 1.0  # the record said "wait on": look again in a second at the earliest
                    if event is None:
                        continue
                if event.kind == QUEUED and not event.data:
                    created = event.at
                started = started or event.kind == STARTED
                yield event
                if event.kind == FAILED:
                    raise JobFailed(event.data.get("error") or "The job failed.")
                if event.kind == CANCELLED:
                    raise JobCancelled(event.data.get("error") or "The job was cancelled.")
                if event.final:
                    return

    def _next_check(self, created: float, started: bool, floor: float, limits: tuple[float, float]) -> float:
        job_timeout, queue_timeout = limits
        deadlines = [created + job_timeout] + ([] if started else [created + queue_timeout])
        return max(floor, 0.01, min(min(deadlines) - time.time(), _RECHECK))

    async def _check_deadlines(self, job_id: str, created: float, started: bool, limits: tuple[float, float]
                               ) -> tuple[ProgressEvent | None, bool]:
        """No event for a while: look at the record. Returns the final event when the job ended
        but its event never came; raises when a deadline really passed; else None (wait on),
        with whether the job has started."""
        job_timeout, queue_timeout = limits
        try:
            record = await self._feed().record(job_id)
        except Exception:  # Redis away: the reader is reconnecting; deadlines wait for facts
            if time.time() < created + job_timeout + queue_timeout:
                return None, started
            raise WorkerUnavailable("I lost contact with the job queue (Redis) while waiting; try again later.")
        if record is None:
            raise JobFailed("I have no record of that job any more (it expired, or Redis lost it); please try again.")
        if record.finished:
            event = ProgressEvent(record.state, job_id, record.finished_at or time.time(),
                                  {"result": record.result, "error": record.error})
            return event, True
        now = time.time()
        if record.state == QUEUED and record.attempts == 0 and now >= record.created_at + queue_timeout:
            await asyncio.to_thread(self.cancel, job_id)
            raise WorkerUnavailable(
                f"No worker picked up the job within {queue_timeout:.0f} s; it was cancelled. "
                "The workers may be busy or down: try again later, or ask an admin."
            )
        if now >= record.created_at + job_timeout:
            await asyncio.to_thread(self.cancel, job_id)
            raise JobFailed(f"The job took longer than {job_timeout:.0f} s and was stopped.")
        return None, started or record.state != QUEUED or record.attempts > 0

    async def run(self, task: str, kwargs: dict[str, Any], *, queue: str = "gpu", **submit: Any) -> Any:
        """Submit and wait for the result, ignoring progress events."""
        job_id = await asyncio.to_thread(self.submit, task, kwargs, queue=queue, **submit)
        result = None
        async for event in self.follow(job_id):
            if event.kind == SUCCEEDED:
                result = event.data.get("result")
        return result

    def _feed(self) -> MemoryFeed | RedisFeed:
        if self._memory_feed is not None:
            return self._memory_feed
        loop = asyncio.get_running_loop()
        feed = self._feeds.get(loop)
        if feed is None:
            feed = self._feeds[loop] = RedisFeed(self.settings.state_redis_url, self.book.record_key)
        return feed

    # ---- workers -------------------------------------------------------------------------
    def require_worker(self, queue: str) -> None:
        if self.embedded:
            if self._embedded is None or not self._embedded.alive:
                raise WorkerUnavailable("The embedded engine is not running.")
            return
        if not self.live_workers(queue):
            raise WorkerUnavailable(
                f"No clipbot worker is online for the '{queue}' queue, so I can't run this right now. "
                "Ask an admin to start one with `clipbot worker`."
            )

    def live_workers(self, queue: str | None = None) -> list[dict[str, Any]]:
        """The processes that ran a heartbeat recently (a hung or killed one drops out)."""
        if self.embedded:
            alive = self._embedded is not None and self._embedded.alive
            return [{"node": "embedded", "pid": 0, "queues": list(self.queues)}] if alive else []
        now, stale = time.time(), stale_after(self.settings)
        return [w for w in self._announcements() if now - w["at"] < stale and (queue is None or queue in w["queues"])]

    @reachable
    def _announcements(self) -> list[dict[str, Any]]:
        return [json.loads(v) for v in self.redis.hgetall(WORKERS).values()]

    def start_embedded(self, task_modules: Iterable[str]) -> None:
        """Start the in-process worker thread (embedded mode only)."""
        if not self.embedded:
            raise RuntimeError("start_embedded is for the embedded engine")
        if self._embedded is None:
            from engine.worker import EmbeddedWorker

            self._embedded = EmbeddedWorker(self, task_modules)

    def stop(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None


def create_engine(settings: EngineSettings, *, queues: Iterable[Queue] = CORE_QUEUES,
                  plugin_settings: dict[str, Any] | None = None) -> Engine:
    """Build the engine the settings describe (embedded when no broker URL is set), serving the
    declared `queues`; `plugin_settings` are handed to tasks (`job.plugin_settings(name)`)."""
    extra = {"queues": list(queues), "plugin_settings": plugin_settings}
    celery = Celery("clipbot", set_as_current=False)
    celery.conf.update(_celery_config(settings))
    redis_url = settings.state_redis_url if settings.broker_url else None
    if redis_url:
        import redis

        client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=30)
        store: Store = RedisStore(client)
        blobs = RedisBlobStore(client, settings.blob_ttl)
        book = JobBook(store, RedisEventLog(client), finished_ttl=settings.job_ttl, blobs=blobs,
                       checkpoints=Checkpoints(blobs, store, int(settings.blob_ttl)))
        return Engine(settings, celery=celery, blobs=blobs, store=store, book=book, redis=client, **extra)
    # Settings such as label sets persist in a file; job records live in memory with the jobs, and
    # finished ones (with their results' blobs) also under the data dir for job_ttl (engine.archive).
    store = SqliteStore(settings.data_dir / "state.sqlite3")
    archive = JobArchive(store, settings.data_dir / "results", settings.job_ttl)
    blobs = ArchivedBlobs(MemoryBlobStore(settings.blob_ttl), archive)
    book = JobBook(SqliteStore(":memory:"), MemoryEventLog(), finished_ttl=settings.job_ttl, blobs=blobs,
                   checkpoints=Checkpoints(blobs, store, int(settings.blob_ttl)), archive=archive)
    return Engine(settings, celery=celery, blobs=blobs, store=store, book=book, **extra)
