"""Throttled progress for long tasks: a loop hands updates over and never waits for the event
store (a slow Redis or chat platform must not slow a GPU loop). Tasks get one from their job
(`JobContext.throttled_progress`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from engine.blobs import BlobStore

if TYPE_CHECKING:
    from engine.tasks import JobContext

log = logging.getLogger(__name__)
MIN_GAP_S = 0.5
_REPORT_EVERY_S = 1.0  # a matrix build's progress reports


class ThrottledProgress:
    """Progress from a background thread. The caller only queues: plain updates coalesce (the
    latest wins, at most one every `min_gap` seconds), snapshots are all sent, in order. Keeps
    the snapshot blob keys (for the job's result) and an ETA from the step times."""

    def __init__(self, emit: Callable[..., None], blobs: BlobStore, snapshots: list[dict], *,
                 min_gap: float = MIN_GAP_S, what: str = "job") -> None:
        self._emit = emit  # emit(**event data): one progress event of the job
        self._blobs = blobs
        self._min_gap = min_gap
        self._what = what
        self._cond = threading.Condition()
        self._pending: collections.deque = collections.deque()
        self._latest: dict | None = None
        self._closed = False
        self._busy = False  # sending a batch
        self._snapshots = list(snapshots)
        self._step_times: collections.deque = collections.deque(maxlen=20)
        self._thread = threading.Thread(target=self._run, name="clipbot-progress", daemon=True)
        self._thread.start()

    @property
    def seconds_per_step(self) -> float | None:
        times = list(self._step_times)[1:] or list(self._step_times)  # the first step warms caches
        return round(sum(times) / len(times), 4) if times else None

    def step_took(self, seconds: float) -> None:
        self._step_times.append(seconds)

    def update(self, step: int, total: int, **data: Any) -> None:
        with self._cond:
            self._latest = {"step": step, "total": total, **data, **self._eta(step, total)}
            self._cond.notify_all()

    def snapshot(self, step: int, total: int, png: bytes, **data: Any) -> None:
        with self._cond:
            self._pending.append({"step": step, "total": total, "png": png, **data, **self._eta(step, total)})
            self._latest = None
            self._cond.notify_all()

    def snapshots(self) -> list[dict]:
        with self._cond:
            return list(self._snapshots)

    def flush(self, timeout: float = 30) -> None:
        """Wait until every queued snapshot has been sent."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout=timeout)

    def close(self, timeout: float = 30) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _eta(self, step: int, total: int) -> dict:
        per_step = self.seconds_per_step
        return {"eta": round(per_step * (total - step), 1)} if per_step is not None else {}

    def _run(self) -> None:
        sent_at = 0.0
        while True:
            with self._cond:
                # Text-only updates at most every min_gap (snapshots and closing go at once), so
                # fast steps don't flood the event log.
                self._cond.wait_for(lambda: self._pending or self._closed,
                                    timeout=max(0.0, sent_at + self._min_gap - time.monotonic()))
                self._cond.wait_for(lambda: self._pending or self._latest or self._closed)
                sent_at = time.monotonic()
                batch = list(self._pending) + ([self._latest] if self._latest else [])
                self._pending.clear()
                self._latest = None
                self._busy = True
                done = self._closed
            for item in batch:
                self._send(item)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            if done:
                return

    def _send(self, item: dict) -> None:
        png = item.pop("png", None)
        try:
            if png is not None:
                key = self._blobs.put(png)
                name = f"step-{item['step']:04d}.png"
                if not item.get("preview") or item["step"] == 0:  # the start is a snapshot; a resume's is not new
                    with self._cond:
                        self._snapshots.append({"step": item["step"], "key": key, "filename": name})
                item.update(snapshot=key, filename=name)
            self._emit(message="", **item)
        except Exception:  # progress is best effort: a hiccup must not kill a long run
            log.warning("could not send progress for %s", self._what, exc_info=True)


class BuildProgress:
    """Turns a label-matrix build's prompt counts into 'preparing ImageNet labels: 35%' reports:
    none for a build that ends within a second, then at most one a second, and 100% at the end
    of a build that reported. Waiting for another process that computes the same matrix is
    reported at once (as 0%)."""

    def __init__(self, what: str, sink: Callable[[int, int, str], object], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._what = what
        self._sink = sink
        self._clock = clock
        self._last = clock()
        self._percent = -1

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        percent = 100 * done // max(1, total)
        if done == 0:
            due = True  # waiting for another process that builds it
        elif done >= total:
            due = self._percent >= 0  # the end of a build that said something
        else:
            due = now - self._last >= _REPORT_EVERY_S
        if not due or percent == self._percent:
            return
        self._last, self._percent = now, percent
        self._sink(done, total, f"preparing {self._what}: {percent}%")


def matrix_build_progress(job: "JobContext", what: str) -> Callable[[int, int], None]:
    """Progress of a matrix build (`engine.models.matrix_cache`) as job events; a cancelled job stops at the next batch
    (or while it waits for another process's build)."""
    report = BuildProgress(what, lambda done, total, message: job.progress(done, total, message=message))

    def progress(done: int, total: int) -> None:
        job.check_cancelled()
        report(done, total)

    return progress
