"""Engine behaviour on the embedded engine (real Celery, memory transport, worker thread) and
its in-process stores. The Redis-backed ones: tests/integration/test_engine_redis.py."""

import asyncio
import time

import pytest

from engine.app import create_engine
from engine.blobs import BlobMissing, MemoryBlobStore
from engine.errors import JobCancelled, JobFailed, WorkerUnavailable
from engine.feed import MemoryFeed
from engine.jobs import JobBook, MemoryEventLog
from engine.store import SqliteStore
from tests.conftest import check_blobs, check_event_feed, check_store, make_settings
from tests.support.polling import wait_until


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    settings = make_settings(tmp_path_factory.mktemp("engine"), job_timeout=30, queue_timeout=10)
    engine = create_engine(settings)
    engine.start_embedded(["tests.sample_tasks"])
    yield engine
    engine.stop()


def collect(engine, job_id):
    async def run():
        events = []
        try:
            async for event in engine.follow(job_id):
                events.append(event)
        except Exception as exc:
            return events, exc
        return events, None

    return asyncio.run(run())


def test_progress_events_in_order_and_record(engine):
    job_id = engine.submit("sample.steps", {"n": 4})
    events, error = collect(engine, job_id)
    assert error is None
    kinds = [e.kind for e in events]
    assert kinds == ["queued", "started", "progress", "progress", "progress", "progress", "succeeded"]
    assert [e.data["step"] for e in events if e.kind == "progress"] == [1, 2, 3, 4]
    snapshot = events[-2].data["snapshot"]
    assert engine.blobs.get(snapshot) == b"snap4"
    assert events[-1].data["result"] == {"done": 4, "attempt": 1}
    record = engine.book.get(job_id)
    assert record.state == "succeeded" and record.attempts == 1 and record.finished_at >= record.started_at


def test_late_follower_sees_every_event(engine):
    job_id = engine.submit("sample.steps", {"n": 2})
    asyncio.run(engine.run("sample.steps", {"n": 1}))  # let the first finish meanwhile
    wait_until(lambda: engine.book.get(job_id).finished, timeout=10, what="the first job to finish")
    events, _ = collect(engine, job_id)
    assert [e.kind for e in events][0] == "queued" and events[-1].kind == "succeeded"


def test_user_error_reaches_the_user(engine):
    _, error = collect(engine, engine.submit("sample.fail", {"kind": "user"}, queue="io"))
    assert isinstance(error, JobFailed) and str(error) == "That prompt is too long (max 300 characters)."


def test_crash_is_hidden_and_logged(engine, caplog):
    job_id = engine.submit("sample.fail", {"kind": "crash"}, queue="io")
    _, error = collect(engine, job_id)
    assert isinstance(error, JobFailed)
    assert "internal detail" not in str(error) and job_id[:8] in str(error)
    assert engine.book.get(job_id).state == "failed"


def test_cancel_running_job(engine):
    job_id = engine.submit("sample.steps", {"n": 200, "delay": 0.02})

    async def run():
        seen = []
        with pytest.raises(JobCancelled):
            async for event in engine.follow(job_id):
                seen.append(event.kind)
                if event.kind == "progress" and event.data["step"] == 2:
                    await asyncio.to_thread(engine.cancel, job_id)
        return seen

    seen = asyncio.run(run())
    assert seen[-1] == "cancelled" and seen.count("progress") < 100
    assert engine.book.get(job_id).state == "cancelled"


def test_job_timeout(tmp_path):
    engine = create_engine(make_settings(tmp_path, job_timeout=0.5))
    engine.start_embedded(["tests.sample_tasks"])
    try:
        _, error = collect(engine, engine.submit("sample.steps", {"n": 100, "delay": 0.05}))
        assert isinstance(error, JobFailed) and "took longer than" in str(error)
    finally:
        engine.stop()


def test_unknown_queue_and_stopped_engine(tmp_path):
    engine = create_engine(make_settings(tmp_path))
    with pytest.raises(ValueError):
        engine.submit("sample.steps", {"n": 1}, queue="fast")
    with pytest.raises(WorkerUnavailable):
        engine.submit("sample.steps", {"n": 1})


# ---- stores (the Redis-backed ones: tests/integration/test_engine_redis.py) ---------------
def test_sqlite_store_roundtrip_keys_and_ttl(tmp_path):
    check_store(SqliteStore(tmp_path / "s.sqlite3"))


def test_sqlite_store_persists(tmp_path):
    SqliteStore(tmp_path / "p.sqlite3").set("k", [1])
    assert SqliteStore(tmp_path / "p.sqlite3").get("k") == [1]


def test_memory_blobs():
    check_blobs(MemoryBlobStore())


def test_memory_event_feed():
    book = JobBook(SqliteStore(), MemoryEventLog())
    check_event_feed(book, MemoryFeed(book.events, book.get))


def test_two_embedded_engines_in_one_process(engine, tmp_path):
    """kombu's memory transport and Celery's current app are process-wide: each engine must
    still run its own jobs (regression: the second engine's worker ran tasks on the wrong app)."""
    other = create_engine(make_settings(tmp_path))
    other.start_embedded(["tests.sample_tasks"])
    try:
        first = asyncio.run(engine.run("sample.steps", {"n": 2}))
        second = asyncio.run(other.run("sample.steps", {"n": 3}))
        assert first["done"] == 2 and second["done"] == 3
        assert other.book.get(engine.submit("sample.steps", {"n": 1})) is None  # separate job books
    finally:
        other.stop()


# ---- a long-running embedded engine ---------------------------------------------------------
def test_job_inputs_are_deleted_when_the_job_ends_outputs_stay(engine):
    image, extra, other = engine.blobs.put(b"i" * 10), engine.blobs.put(b"e" * 5), engine.blobs.put(b"o")
    kept = engine.blobs.put(b"k")
    job_id = engine.submit("sample.consume", {"image": image, "extra": [extra], "snapshot": True},
                           input_blobs=[other])
    events, error = collect(engine, job_id)
    assert error is None and events[-1].data["result"] == {"size": 15}
    for key in (image, extra, other):
        with pytest.raises(BlobMissing):
            engine.blobs.get(key)
    snapshot = next(e.data["snapshot"] for e in events if e.kind == "progress")
    assert engine.blobs.get(snapshot) == b"s" * 15 and engine.blobs.get(kept) == b"k"
    # a failed job's inputs go too (the image was gone already: a clear user error)
    again = engine.submit("sample.consume", {"image": image, "extra": []})
    _, error = collect(engine, again)
    assert isinstance(error, JobFailed) and "no longer available" in str(error)


@pytest.mark.slow
def test_finished_jobs_are_forgotten_after_job_ttl(tmp_path):
    engine = create_engine(make_settings(tmp_path, job_ttl=1))
    engine.start_embedded(["tests.sample_tasks"])
    try:
        job_id = engine.submit("sample.steps", {"n": 1})
        collect(engine, job_id)
        assert engine.book.get(job_id).state == "succeeded" and engine.book.events.events(job_id)
        time.sleep(2.1)
        asyncio.run(engine.run("sample.steps", {"n": 1}))  # stores sweep when something is added
        assert engine.book.get(job_id) is None and engine.book.events.events(job_id) == []
        _, error = collect(engine, job_id)  # following a forgotten job says so instead of hanging
        assert isinstance(error, JobFailed) and "no record of that job" in str(error)
    finally:
        engine.stop()


_GROWTH = """
import asyncio, ctypes, gc, json, sys
from pathlib import Path
from engine.app import create_engine
from tests.conftest import make_settings

engine = create_engine(make_settings(Path(sys.argv[1]), job_ttl=1, blob_ttl=1))
engine.start_embedded(["tests.sample_tasks"])

def rss():
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS shows live memory
    except OSError:
        pass
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096

async def jobs(n):
    for _ in range(n):
        image = engine.blobs.put(b"x" * 50_000)  # an upload, deleted when the job ends
        await engine.run("sample.consume", {"image": image, "extra": [], "snapshot": True})  # + a 50 kB snapshot

async def main():
    await jobs(100)
    await asyncio.sleep(2.5); await jobs(1)  # let the first ones expire and the stores sweep
    first = rss()
    await jobs(900)
    await asyncio.sleep(2.5); await jobs(1)
    return first, rss()

first, last = asyncio.run(main())
print(json.dumps({"after_100": first, "after_1000": last, "blobs": len(engine.blobs), "logs": len(engine.book.events)}))
engine.stop()
"""


def test_embedded_engine_does_not_grow(tmp_path):
    """RSS after 1000 jobs (each with a 50 kB upload and a 50 kB snapshot) stays within a few MB
    of RSS after 100: records, event logs, uploads and snapshots all go. In a subprocess, so
    other tests' allocations do not blur the numbers."""
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT

    out = subprocess.run([sys.executable, "-c", _GROWTH, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    grew = (sizes["after_1000"] - sizes["after_100"]) / 2**20
    assert grew < 4, f"grew {grew:.1f} MB over 900 jobs: {sizes}"
    assert sizes["blobs"] <= 4 and sizes["logs"] <= 2, sizes


def test_200_concurrent_followers_need_no_threads(engine):
    """Following is callbacks into the loop, not a thread per follower (asyncio.to_thread has
    about six): 200 followers at once all get their answer and the thread count stays put."""
    import threading

    job_ids = [engine.submit("sample.steps", {"n": 2}) for _ in range(200)]
    peak = threading.active_count()

    async def follow(job_id):
        async for event in engine.follow(job_id):
            last = event
        return last.data["result"]["done"]

    async def watch(done):
        nonlocal peak
        while not done.is_set():
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.01)

    async def main():
        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        results = await asyncio.gather(*(follow(j) for j in job_ids))
        done.set()
        await watcher
        return results

    before = threading.active_count()
    assert asyncio.run(main()) == [2] * 200
    assert peak <= before


def test_queue_timeout_does_not_count_the_requesters_own_lag(tmp_path):
    """A follower whose event loop was blocked past the queue timeout while the job started
    still gets the answer: deadlines are confirmed against the job record."""
    engine = create_engine(make_settings(tmp_path, queue_timeout=0.3, job_timeout=30))
    engine.start_embedded(["tests.sample_tasks"])
    try:
        async def main():
            job_id = await asyncio.to_thread(engine.submit, "sample.steps", {"n": 3, "delay": 0.3})
            kinds = []
            async for event in engine.follow(job_id):
                kinds.append(event.kind)
                if len(kinds) == 1:
                    time.sleep(1.0)  # a busy event loop: nothing is read for three queue timeouts
            return kinds

        assert asyncio.run(main())[-1] == "succeeded"
    finally:
        engine.stop()


def test_torch_threads_share_the_cores(monkeypatch, tmp_path):
    from engine.worker import torch_threads

    cores = len(__import__("os").sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    settings = make_settings(tmp_path)
    assert torch_threads(settings, 1) == cores and torch_threads(settings, cores * 2) == 1
    assert torch_threads(make_settings(tmp_path, worker_torch_threads=3), 2) == 3  # the setting wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # an operator's cap is kept
    assert torch_threads(settings, 1) == 1
