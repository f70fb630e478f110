"""What a job leaves in Redis once it has ended: nothing of its own. Its uploads go also when it
is cancelled before a worker took it (by hand, or because no worker did in time). Real Redis and
a real `clipbot worker` (tests/sample_tasks.py through tests/sample_plugin.py)."""

from __future__ import annotations

import asyncio

import pytest
import redis

from engine.app import create_engine
from engine.errors import WorkerUnavailable
from tests.conftest import make_settings
from tests.support.polling import wait_until

SAMPLE = {"CLIPBOT_EXTRA_PLUGINS": "tests.sample_plugin"}


def _blob_exists(client, key: str) -> bool:
    return bool(client.exists(f"clipbot:blob:{key}"))


def test_a_job_cancelled_while_queued_deletes_its_uploads(redis_url, start_worker, tmp_path):
    client = redis.Redis.from_url(redis_url)
    engine = create_engine(make_settings(tmp_path, broker_url=redis_url, queue_timeout=1.5))
    worker = start_worker("--pool", "solo", **SAMPLE)
    worker.wait_ready(engine)
    busy = engine.submit("sample.steps", {"n": 400, "delay": 0.05})  # the only worker is busy for 20 s
    wait_until(lambda: engine.book.get(busy).state == "started", timeout=60, what="the busy job to start",
               detail=worker.log)

    # cancelled by hand while it waits: its uploads (the task's declared inputs) go at once
    image, extra = engine.blobs.put(b"i" * 10), engine.blobs.put(b"e" * 5)
    job = engine.submit("sample.consume", {"image": image, "extra": [extra]})
    assert engine.book.get(job).inputs == [image, extra]  # recorded as it was submitted
    assert engine.cancel(job)
    assert engine.book.get(job).state == "cancelled"
    assert not _blob_exists(client, image) and not _blob_exists(client, extra)

    # cancelled because no worker took it within the queue timeout: the same
    image = engine.blobs.put(b"j" * 10)
    waiting = engine.submit("sample.consume", {"image": image, "extra": []})

    async def follow():
        async for _event in engine.follow(waiting):
            pass

    with pytest.raises(WorkerUnavailable, match="No worker picked up the job"):
        asyncio.run(follow())
    assert engine.book.get(waiting).state == "cancelled" and not _blob_exists(client, image)
    assert engine.cancel(busy)
