"""`clipbot worker`: a Celery prefork worker for the distributed engine.

Models load lazily in the worker children, never in the parent before it forks (CUDA is not
fork-safe), and nothing slow runs in `worker_process_init` (Celery kills a child whose init
takes over 4 s). The parent announces itself in Redis so the bot can tell users when no
worker is online instead of queueing into the void.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable, Iterable

from celery import signals

from engine.app import HEARTBEAT_EVERY, Engine
from engine.errors import UserError
from engine.models.registry import registry

log = logging.getLogger(__name__)


def run_worker(engine: Engine, task_modules: Iterable[str], *, queues: list[str], concurrency: int,
               pool: str = "prefork", loglevel: str = "INFO", prepare: Callable[[], Any] | None = None) -> int:
    """Run until stopped (SIGTERM: warm shutdown, running jobs finish). Returns the exit code.

    `prepare()` runs once in each process that runs jobs, in a background thread, when it
    starts (e.g. precomputing caches; never in `worker_process_init` itself: it must stay fast)."""
    if engine.embedded:  # callers check settings first and tell the user; this guards the API
        raise ValueError("run_worker needs a Redis-backed engine, not the embedded one")
    infos = engine.register_task_modules(task_modules)
    log.info("tasks: %s", ", ".join(f"{i.name}[{i.queue}]" for i in infos) or "none")
    registry.forbid_loading("models load in worker children, not in the prefork parent (CUDA is not fork-safe)")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_EVERY):
            _safe_heartbeat(engine, queues)

    def start_preparing() -> None:
        if prepare is not None:
            threading.Thread(target=_safe_prepare, args=(prepare,), name="clipbot-prepare", daemon=True).start()

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_: Any) -> None:
        registry.allow_loading()
        start_preparing()

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: Any) -> None:
        if pool != "prefork":  # solo/threads: this process runs the jobs
            start_preparing()
        _safe_heartbeat(engine, queues)
        threading.Thread(target=beat, name="clipbot-heartbeat", daemon=True).start()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        stop.set()
        try:
            engine.heartbeat(queues, os.getpid(), gone=True)
        except Exception:  # the broker may already be gone; the entry goes stale by itself
            log.warning("could not withdraw the worker announcement", exc_info=True)

    if pool == "solo":
        registry.allow_loading()
    worker = engine.celery.Worker(
        hostname=engine.hostname, queues=queues, concurrency=concurrency, pool=pool, loglevel=loglevel,
        without_mingle=True, without_gossip=True,
    )
    worker.start()
    return worker.exitcode or 0


def _safe_prepare(prepare: Callable[[], Any]) -> None:
    try:
        prepare()
    except Exception as exc:  # e.g. weights not downloaded: jobs will say so too
        log.warning("preparing at start failed: %s", exc, exc_info=not isinstance(exc, UserError))


def _safe_heartbeat(engine: Engine, queues: list[str]) -> None:
    try:
        engine.heartbeat(queues, os.getpid())
    except Exception:
        log.warning("worker heartbeat failed", exc_info=True)
