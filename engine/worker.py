"""The engine, worker side: bind tasks to Celery, run deliveries, heartbeat, reap.

`clipbot worker` runs a Celery worker for the distributed engine (`run_worker`); `clipbot run`
runs the same tasks on a thread in the bot process (`EmbeddedWorker`).

Health, distributed: every process that runs jobs (a prefork child, or the worker itself with
the solo/threads pool) announces itself in Redis from a heartbeat thread, so a hung child
stops being advertised. The worker's main process ("node") also beats, and every few seconds:
- kills its own children that stopped beating (SIGSTOP, a wedged C call); Celery replaces the
  child and puts its job back in the queue (`task_reject_on_worker_lost`);
- reaps: a job whose process and node both stopped beating (the whole worker was killed) is
  queued again, or failed once it has used up `max_attempts`.
A delivery of a job that already ended, or that has no record (it ended so long ago that its
record expired: a dead worker's delivery handed out again after the visibility timeout), is
acknowledged and not run. Every worker on one Redis must use the same visibility timeout:
`join_fleet` refuses to start one that differs from a live worker's.

Models load lazily in the worker children, never in the parent before it forks (CUDA is not
fork-safe), and nothing slow runs in `worker_process_init` (Celery kills a child whose init
takes over 4 s).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable

from engine.health import (
    FORGET_AFTER, NODES, REAPER, RUNNING, WORKERS, gave_up_message, heartbeat_every, load_table)
from engine.errors import JobCancelled, UserError
from engine.jobs import CANCELLED, FAILED, QUEUED, STARTED, SUCCEEDED
from engine.models.registry import registry
from engine.observe import (
    WORKER_PORT, ObserveServer, QueueDepth, Readiness, engine_checks, forget_process, job_scope, metrics,
    note_gpu_memory, observe_address, prepared_check, processes_with_files, scrape_registry, use_multiprocess_dir)
from engine.tasks import JobContext, TaskInfo, blob_keys, tasks_in
from engine.wire import to_wire

if TYPE_CHECKING:
    from engine.app import Engine
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)
_STOP_WAIT_S = 30.0  # how long the embedded worker's stop waits for a cancelled job to notice


class WorkerRuntime:
    """What every worker process needs: its tasks bound to Celery and a way to run them."""

    def __init__(self, engine: Engine, *, node: str, queues: Iterable[str]) -> None:
        self.engine = engine
        self.settings = engine.settings
        self.book = engine.book
        self.redis = engine.redis  # None when embedded: no heartbeats, nothing to reap
        self.node = node
        self.queues = list(queues)
        self.main_pid = os.getpid()
        self.running: set[str] = set()  # ids of the jobs this process is running now

    @property
    def process(self) -> str:
        return f"{self.node}/{os.getpid()}"

    # ---- tasks -------------------------------------------------------------------------
    def register(self, modules: Iterable[str]) -> list[TaskInfo]:
        """Import task modules (heavy: they may import torch) and bind their tasks to Celery."""
        import importlib

        infos = []
        for name in modules:
            for info in tasks_in(importlib.import_module(name)):
                if info.name not in self.engine.celery.tasks:
                    self._bind(info)
                infos.append(info)
        for info in infos:  # the submitting side records a job's inputs from this as it submits
            self.book.declare_task(info.name, info.inputs)
        return infos

    def _bind(self, info: TaskInfo) -> None:
        if info.queue not in self.engine.queues:
            raise ValueError(f"task {info.name} uses the queue {info.queue!r}, which no plugin declares "
                             f"(declared: {', '.join(self.engine.queues)}); declare it with the clipbot_queues hook")
        runtime = self

        def run(self_task: Any, job_id: str, **kwargs: Any) -> None:
            runtime.run_delivery(info, job_id, kwargs)

        run.__name__ = info.name.replace(".", "_")
        # shared=False: a shared task would be copied onto every Celery app in the process,
        # still bound to this runtime.
        self.engine.celery.task(run, name=info.name, bind=True, queue=self.engine.queue_name(info.queue),
                                shared=False)

    def run_delivery(self, info: TaskInfo, job_id: str, kwargs: dict[str, Any]) -> None:
        """Execute one delivery of a job: record it, run the function, record the outcome. Its
        log lines carry the job id (`engine.observe.job_scope`); the outcome is counted."""
        with job_scope(job_id):
            outcome = self._deliver(info, job_id, kwargs)
        metrics().jobs.labels(info.name, outcome).inc()

    def _deliver(self, info: TaskInfo, job_id: str, kwargs: dict[str, Any]) -> str:
        """The delivery; returns its outcome (`engine.observe.OUTCOMES`)."""
        self._pump(info.queue)  # this delivery left the broker queue: room for a held-back job
        record = self.book.get(job_id)
        if record is None:
            # Every job gets its record as it is submitted, and keeps it a week unless it ends. So
            # this job ended long ago (its record expired after CLIPBOT_JOB_TTL), or was never
            # submitted under this id: typically a dead worker's delivery that Redis hands out
            # again after the visibility timeout, the job since queued again and finished. It
            # would run for nobody.
            log.warning("job %s has no record (it ended long ago, or was never submitted); not running it",
                        job_id[:8])
            return "refused"
        if record.finished:  # a redelivery of a job that already ended: nothing to do
            log.info("job %s already ended (%s); not running it again", job_id[:8], record.state)
            return "refused"
        inputs = sorted(set(record.inputs) | set(blob_keys(info.inputs, kwargs)))
        attempt = record.attempts + 1
        if self.book.cancel_requested(job_id):
            self.book.update(job_id, inputs=inputs)
            self._end(job_id, CANCELLED, error="The job was cancelled.")
            return CANCELLED
        if attempt > self.settings.max_attempts:  # its earlier attempts killed their processes
            self.book.update(job_id, inputs=inputs)
            self._end(job_id, FAILED, error=gave_up_message(job_id, record.attempts))
            return FAILED
        me, started = self.process, time.time()
        self.book.update(job_id, state=STARTED, started_at=started, attempts=attempt, worker=me, inputs=inputs)
        if self.redis is not None:
            self.redis.hset(RUNNING, job_id, me)
        self.book.emit(job_id, STARTED, attempt=attempt, worker=me)
        if attempt == 1:
            metrics().queue_wait.labels(info.name).observe(max(0.0, started - record.created_at))
        began = time.perf_counter()
        outcome, result, error = self._run(info, job_id, attempt, kwargs)
        metrics().run_time.labels(info.name, outcome).observe(time.perf_counter() - began)
        self._finish(job_id, attempt, outcome, result=result, error=error)
        note_gpu_memory()
        return outcome

    def _run(self, info: TaskInfo, job_id: str, attempt: int, kwargs: dict[str, Any]) -> tuple[str, Any, str | None]:
        """Run the task function: (outcome, result, user-facing error). A crash is logged with a
        short reference that the error repeats, so a user's report finds the log line."""
        self.running.add(job_id)
        try:
            return SUCCEEDED, to_wire(info.fn(JobContext(self.engine, job_id, attempt), **kwargs)), None
        except JobCancelled as exc:
            return CANCELLED, None, str(exc)
        except UserError as exc:
            return FAILED, None, str(exc)
        except Exception:
            ref = job_id[:8]
            log.exception("job %s (%s) crashed (ref %s)", job_id, info.name, ref, extra={"ref": ref})
            return FAILED, None, f"Something went wrong on the worker (ref {ref}); it has been logged."
        finally:
            self.running.discard(job_id)

    def _finish(self, job_id: str, attempt: int, state: str, *, result: Any = None, error: str | None = None) -> None:
        current = self.book.get(job_id)
        if current is not None and (current.finished or current.attempts != attempt):
            # this attempt was given up on (its process looked dead) and another one took over
            log.warning("job %s attempt %d ended after it was superseded; dropping its outcome", job_id[:8], attempt)
            return
        self._end(job_id, state, result=result, error=error)

    def _end(self, job_id: str, state: str, *, result: Any = None, error: str | None = None) -> None:
        """Finish the job and take it off the running list (an attempt that killed its process
        left its entry there)."""
        record = self.book.finish(job_id, state, result=result, error=error)
        if self.redis is not None:
            self.redis.hdel(RUNNING, job_id)
        try:
            self.engine.quotas.charge(record)
        except Exception as exc:  # accounting must never fail a job that ran
            log.warning("job %s: could not charge its GPU time: %s", job_id[:8], exc)

    def _pump(self, queue: str) -> None:
        try:
            self.engine.pump(queue)
        except Exception as exc:  # the next delivery or heartbeat round pumps again
            log.warning("could not hand held-back %s jobs to the broker: %s", queue, exc)

    # ---- heartbeats (distributed only) -------------------------------------------------
    def beat(self) -> None:
        """Announce this process as one that runs jobs; readers ignore stale announcements."""
        info = {"node": self.node, "pid": self.main_pid, "process": os.getpid(), "queues": self.queues,
                "at": time.time()}
        self.redis.hset(WORKERS, self.process, json.dumps(info))

    def withdraw(self) -> None:
        """Remove this process's announcements, at once or not at all: shutting down must not
        wait out the retries that ride over a Redis restart (the entries go stale anyway)."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        quick = redis.Redis.from_url(self.settings.state_redis_url, socket_timeout=2, socket_connect_timeout=2,
                                     retry=Retry(NoBackoff(), 0))
        try:
            quick.hdel(WORKERS, self.process)
            if os.getpid() == self.main_pid:
                quick.hdel(NODES, self.node)
        finally:
            quick.close()

    def _node_beat(self) -> None:
        # The visibility timeout and dead-after travel with the beat: `join_fleet` compares them.
        self.redis.hset(NODES, self.node, json.dumps({
            "pid": self.main_pid, "at": time.time(), "visibility_timeout": self.settings.visibility_timeout,
            "dead_after": self.settings.worker_dead_after}))

    def join_fleet(self) -> None:
        """Announce this node, or refuse to start (UserError) when a live node uses another
        visibility timeout. Every consumer of a Redis broker hands out again *any* queue's
        unacknowledged message older than its own timeout: one worker with a shorter one would
        re-deliver the others' running jobs. A node is live until its own dead-after passes
        without a beat; to change the value, stop every worker."""
        mine = self.settings.visibility_timeout
        self._node_beat()
        now = time.time()
        for node, info in load_table(self.redis.hgetall(NODES)).items():
            theirs = info.get("visibility_timeout")
            if node == self.node or theirs is None or theirs == mine:
                continue
            if now - info.get("at", 0) >= info.get("dead_after", self.settings.worker_dead_after):
                continue  # gone (killed without withdrawing)
            self.redis.hdel(NODES, self.node)
            raise UserError(
                f"CLIPBOT_VISIBILITY_TIMEOUT is {mine} s here but the running worker {node} uses {theirs} s; "
                "every worker on this Redis must use the same value (a shorter one hands out the others' "
                f"running jobs again): set {theirs}, or stop every worker to change it.")

    def tend(self, *, has_children: bool) -> None:
        """The node's round: beat, replace hung children, reap jobs of dead workers."""
        self._node_beat()
        if has_children:
            self._replace_hung_children()
            self._forget_exited_children()
        self.reap()
        for queue in self.queues:  # a pump lost with a killed process is made up for here
            self._pump(queue)

    def _forget_exited_children(self) -> None:
        """Children killed before they could say so (SIGKILL, OOM) stop counting as prepared."""
        for pid in processes_with_files() - {self.main_pid}:
            if not _is_my_child(pid):
                forget_process(pid)

    def _replace_hung_children(self) -> None:
        now, dead_after = time.time(), self.settings.worker_dead_after
        for field, raw in self.redis.hgetall(WORKERS).items():
            info = json.loads(raw)
            pid = info.get("process")
            if info.get("node") != self.node or not isinstance(pid, int) or pid == self.main_pid:
                continue
            if not _is_my_child(pid):  # it exited and Celery replaced it
                self.redis.hdel(WORKERS, field)
            elif now - info["at"] > dead_after:
                log.error("worker child %d sent no heartbeat for %.0f s (hung?); killing it so Celery replaces it "
                          "and its job is retried", pid, now - info["at"])
                os.kill(pid, signal.SIGKILL)
                self.redis.hdel(WORKERS, field)

    def reap(self) -> list[str]:
        """Queue again the jobs whose whole worker stopped beating; returns their ids."""
        if not self.redis.set(REAPER, self.node, nx=True, px=max(100, int(heartbeat_every(self.settings) * 900))):
            return []  # another worker reaps this round
        now, dead_after = time.time(), self.settings.worker_dead_after
        processes = load_table(self.redis.hgetall(WORKERS))
        nodes = load_table(self.redis.hgetall(NODES))
        reaped = []
        for raw_job, raw_process in self.redis.hgetall(RUNNING).items():
            job_id, process = raw_job.decode(), raw_process.decode()
            node = process.rsplit("/", 1)[0]
            if any(now - info.get("at", 0) < dead_after for info in (processes.get(process), nodes.get(node)) if info):
                continue  # alive, or its node is alive and replaces a hung child itself
            if self.redis.hdel(RUNNING, job_id):  # claim it: exactly one reaper gets 1
                self._requeue(job_id, process)
                reaped.append(job_id)
        for key, table in ((WORKERS, processes), (NODES, nodes)):
            gone = [name for name, info in table.items() if now - info.get("at", 0) > FORGET_AFTER]
            if gone:
                self.redis.hdel(key, *gone)
        return reaped

    def _requeue(self, job_id: str, process: str) -> None:
        record = self.book.get(job_id)
        if record is None or record.finished or record.state != STARTED:
            return
        if record.attempts >= self.settings.max_attempts:
            log.error("job %s: worker %s died on attempt %d; giving up", job_id[:8], process, record.attempts)
            self.book.finish(job_id, FAILED, error=gave_up_message(job_id, record.attempts))
            return
        log.warning("job %s: worker %s stopped heartbeating; queueing the job again", job_id[:8], process)
        self.book.update(job_id, state=QUEUED, worker=None)
        self.book.emit(job_id, QUEUED, requeued=True, attempt=record.attempts)
        self.engine.celery.send_task(record.task, args=(job_id,), kwargs=record.kwargs, task_id=job_id,
                                     queue=self.engine.queue_name(record.queue))


def _is_my_child(pid: int) -> bool:
    """A live (not zombie) child of this process: /proc tells, so a recycled pid is never killed."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]
    return state != "Z" and int(ppid) == os.getpid()


def _every(period: float, stop: threading.Event, step: Any, what: str) -> threading.Thread:
    """Run `step` now and every `period` seconds until `stop`; failures are one log line each."""
    def loop() -> None:
        while True:
            try:
                step()
            except Exception as exc:
                log.warning("%s failed: %s", what, exc)
            if stop.wait(period):
                return

    thread = threading.Thread(target=loop, name=f"clipbot-{what.replace(' ', '-')}", daemon=True)
    thread.start()
    return thread


def torch_threads(settings: EngineSettings, children: int) -> int:
    """Torch threads per child: the setting, or the CPU cores shared out among the children (no
    more than an OMP_NUM_THREADS the operator set)."""
    if settings.worker_torch_threads:
        return settings.worker_torch_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cores // max(1, children))
    omp = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(omp)) if omp.isdigit() and int(omp) > 0 else share


def _limit_torch_threads(threads: int) -> None:
    # Before torch is imported the environment decides its pool size; after, set_num_threads does.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


# ---- `clipbot worker` ---------------------------------------------------------------------
def wait_for_redis(url: str, *, retry_every: float = 3.0, out: Any = None) -> None:
    """Block until Redis answers; one line on `out` per failed try. Ctrl-C raises KeyboardInterrupt."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from engine.store import redis_where

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    out = out or sys.stderr
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                reason = "connection refused" if "refused" in str(exc) else str(exc)
                print(f"clipbot worker: can't reach Redis at {redis_where(client)} ({reason}); "
                      f"retrying in {retry_every:.0f} s (Ctrl-C to stop)", file=out, flush=True)
                time.sleep(retry_every)
    finally:
        client.close()


def run_worker(engine: Engine, task_modules: Iterable[str], *, queues: list[str], concurrency: int,
               pool: str = "prefork", loglevel: str = "INFO", prepare: Callable[[], Any] | None = None) -> int:
    """Run until stopped (SIGTERM: warm shutdown, running jobs finish). Returns the exit code.

    `prepare()` runs once in each process that runs jobs, in a background thread, when it
    starts (e.g. precomputing caches; never in `worker_process_init` itself: it must stay fast)."""
    if engine.embedded:  # callers check settings first and tell the user; this guards the API
        raise ValueError("run_worker needs a Redis-backed engine, not the embedded one")
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    settings = engine.settings
    children = concurrency if pool == "prefork" else 1
    use_multiprocess_dir()  # before any metric: the children count their jobs in files there
    consuming = threading.Event()
    server = _serve_observe(engine, queues, children, consuming)
    try:
        wait_for_redis(settings.state_redis_url)
        logging.getLogger("celery.worker.consumer.consumer").addFilter(_one_line)
        # Ride out a Redis restart mid-job (about a minute) instead of failing the job's writes.
        engine.redis.set_retry(Retry(ExponentialBackoff(cap=2.0, base=0.1), 40))
        runtime = WorkerRuntime(engine, node=f"clipbot@{socket.gethostname()}.{os.getpid()}", queues=queues)
        runtime.join_fleet()
        infos = runtime.register(task_modules)
        log.info("tasks: %s", ", ".join(f"{i.name}[{i.queue}]" for i in infos) or "none")
        period, stop = heartbeat_every(settings), threading.Event()
        _connect_signals(runtime, pool, period, stop, torch_threads(settings, children), prepare,
                         _Observed(server, consuming))
        if pool == "prefork":
            registry.forbid_loading("models load in worker children, not in the prefork parent (CUDA is not fork-safe)")
        else:
            registry.allow_loading()
        worker = engine.celery.Worker(
            hostname=runtime.node, queues=queues, concurrency=concurrency, pool=pool, loglevel=loglevel,
            without_mingle=True, without_gossip=True,
        )
        worker.start()
        return worker.exitcode or 0
    finally:
        if server is not None:
            server.close()


class _Observed:
    """What the worker's signal handlers tell the observe endpoints."""

    def __init__(self, server: ObserveServer | None, consuming: threading.Event) -> None:
        self.server, self.consuming = server, consuming


def _serve_observe(engine: Engine, queues: list[str], children: int, consuming: threading.Event
                   ) -> ObserveServer | None:
    """/metrics, /healthz, /readyz of this worker (None: CLIPBOT_OBSERVE_PORT=0). Ready: Redis
    answers, the worker consumes its queues, and each of its `children` processes prepared."""
    address = observe_address(engine.settings, WORKER_PORT)
    if address is None:
        return None
    readiness = Readiness([*engine_checks(engine),
                           lambda: None if consuming.is_set() else "starting: not consuming the queues yet",
                           prepared_check(children)])
    depth = QueueDepth(engine, queues)
    return ObserveServer(*address, registry=scrape_registry([depth, readiness]), readiness=readiness).start()


def _one_line(record: logging.LogRecord) -> bool:
    """Celery's "Cannot connect to redis://...\nTrying again in 2.00 seconds..." as one line."""
    if record.exc_info is None and "\n" in str(record.msg):
        record.msg, record.args = record.getMessage().replace("..\n", ". ").replace("\n", " "), ()
    return True


def _connect_signals(runtime: WorkerRuntime, pool: str, period: float, stop: threading.Event,
                     threads: int, prepare: Callable[[], Any] | None, observed: _Observed) -> None:
    from celery import signals

    prefork = pool == "prefork"

    def start_preparing() -> None:
        if prepare is None:
            metrics().prepared.set(1)
        else:
            threading.Thread(target=_safe_prepare, args=(prepare,), name="clipbot-prepare", daemon=True).start()

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_: Any) -> None:  # in each prefork child; must stay cheap (4 s limit)
        if observed.server is not None:
            observed.server.close_inherited()
        registry.allow_loading()
        _limit_torch_threads(threads)
        _every(period, threading.Event(), runtime.beat, "worker heartbeat")
        start_preparing()

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(**_: Any) -> None:
        forget_process(os.getpid())
        _quietly(runtime.withdraw)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        # We keep Celery's current default (running jobs go on through a broker outage); its notice
        # about a future default is a 7-line warning on every reconnect. (Celery sets its own
        # warning filters while starting, so ours goes in now.)
        warnings.filterwarnings("ignore", message=r"\s*In Celery 5.1 we introduced an optional breaking change")
        if not prefork:  # this process runs the jobs itself
            _limit_torch_threads(threads)
            _every(period, stop, runtime.beat, "worker heartbeat")
            start_preparing()
        _every(period, stop, lambda: runtime.tend(has_children=prefork), "worker upkeep")
        observed.consuming.set()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        stop.set()
        _quietly(runtime.withdraw)


def _safe_prepare(prepare: Callable[[], Any]) -> None:
    """Prepare; a process that did counts in `clipbot_worker_prepared` (the worker's /readyz)."""
    try:
        prepare()
    except Exception as exc:  # e.g. weights not downloaded: jobs will say so too
        log.warning("preparing at start failed: %s", exc, exc_info=not isinstance(exc, UserError))
        return
    metrics().prepared.set(1)


def _quietly(step: Any) -> None:
    try:
        step()
    except Exception as exc:  # the broker may already be gone; the entry goes stale by itself
        log.warning("could not withdraw the worker announcement: %s", exc)


# ---- the embedded engine's worker thread ------------------------------------------------
class EmbeddedWorker:
    """Celery's worker on a thread of this process (solo pool, memory transport)."""

    def __init__(self, engine: Engine, task_modules: Iterable[str]) -> None:
        from celery.worker import WorkController

        self.runtime = WorkerRuntime(engine, node=f"embedded-{uuid.uuid4().hex[:8]}@{socket.gethostname()}",
                                     queues=list(engine.queues))
        self.runtime.register(task_modules)
        ready = threading.Event()
        engine.celery.finalize()
        self._worker = WorkController(
            app=engine.celery, hostname=self.runtime.node, pool="solo", concurrency=1,
            queues=[engine.queue_name(q) for q in engine.queues], ready_callback=lambda consumer: ready.set(),
            without_heartbeat=True, without_mingle=True, without_gossip=True, loglevel=engine.settings.log_level,
        )

        def serve() -> None:
            # Celery runs tasks against the thread's *current* app; with several engines in
            # one process (tests, tools) the worker thread must name its own.
            engine.celery.set_current()
            self._worker.start()

        self._thread = threading.Thread(target=serve, name="clipbot-embedded-worker", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the embedded worker did not start within 30 s")

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Cancel the job in flight, then stop. A job left running would keep torch busy on this
        thread while the interpreter exits, and torch's thread pools abort the process then
        ("terminate called without an active exception"). Jobs stop at their next cancellation
        check (a step, a batch)."""
        for job_id in list(self.runtime.running):
            self.runtime.engine.cancel(job_id)
        self._worker.stop(in_sighandler=False)
        self._thread.join(_STOP_WAIT_S)
        if self._thread.is_alive():
            log.warning("the embedded worker is still running a job %.0f s after it was cancelled", _STOP_WAIT_S)
