"""Engine behaviour on the embedded engine (real Celery, memory transport, worker thread) and
its in-process stores. The Redis-backed ones: tests/integration/test_engine_redis.py."""

import asyncio
import time

import pytest

from engine.app import create_engine
from engine.blobs import MemoryBlobStore
from engine.errors import JobCancelled, JobFailed, WorkerUnavailable
from engine.feed import MemoryFeed
from engine.jobs import JobBook, MemoryEventLog
from engine.store import SqliteStore
from tests.conftest import check_blobs, check_event_feed, check_store, make_settings


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
    deadline = time.monotonic() + 10
    while not engine.book.get(job_id).finished and time.monotonic() < deadline:
        time.sleep(0.01)
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
