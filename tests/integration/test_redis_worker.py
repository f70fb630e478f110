"""/whatis through the real machine Redis and real `clipbot worker` processes (prefork)."""

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis

from bot.adapters.local import LocalAdapter
from tests.conftest import ROOT, clipbot_env, make_settings, write_image
from tests.support.polling import wait_until


def say(adapter, line):
    return asyncio.run(adapter.handle_line(line))


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.delete("clipbot:workers")  # announcements of workers from earlier tests
    return client


def test_whatis_through_redis_and_a_worker(redis_engine, start_worker, client, tmp_path):
    worker = start_worker()
    worker.wait_ready(redis_engine.engine)
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="redis-1")
    image = write_image(tmp_path / "red.png")
    blobs_before = set(client.scan_iter("clipbot:blob:*"))  # earlier tests' pictures, still within their TTL
    reply = say(adapter, f"/whatis {image} labels: cat, dog, person")[-1]
    assert reply.final and not reply.error, f"{reply.text}\n{worker.log()}"
    assert "1. " in reply.text and "tiny-test" in reply.text

    # label sets live in Redis, shared by every bot process
    assert "Saved 2 labels" in say(adapter, "/labels set sun, moon")[-1].text
    other_bot = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="redis-1")
    assert "default: sun, moon" in say(other_bot, "/labels show")[-1].text

    # images travel as blobs, never through Celery's result backend, and an upload is deleted once its
    # job has ended (it does not wait out CLIPBOT_BLOB_TTL in Redis); what stays is the small copy the
    # answer's Where? button names
    assert not list(client.scan_iter("celery-task-meta-*"))
    kept = {f"clipbot:blob:{a.options['picture']}".encode() for a in reply.actions if a.command == "where"}
    assert len(kept) == 1
    assert set(client.scan_iter("clipbot:blob:*")) <= blobs_before | kept


@pytest.mark.slow
def test_worker_killed_mid_task_does_not_lose_the_job(redis_url, start_worker, client, tmp_path):
    settings = make_settings(tmp_path, broker_url=redis_url, queue_timeout=120, job_timeout=300)
    from bot.app import open_app as app

    worker = start_worker()
    with app(settings, start_worker=False) as dispatcher:
        worker.wait_ready(dispatcher.engine)
        image = write_image(tmp_path / "k.png")
        key = dispatcher.engine.blobs.put(image.read_bytes())
        # Labels no test has used: nothing cached, so 150 x 80 prompts keep the child busy for seconds.
        labels = [f"thing number {i}" for i in range(150)]
        job_id = dispatcher.engine.submit("whatis.classify", {"image": key, "labels": labels, "top": 3})

        wait_until(lambda: dispatcher.engine.book.get(job_id).state == "started", timeout=60, what="the job to start")
        (child,) = worker.children()
        os.kill(child, signal.SIGKILL)  # the OOM killer, a segfault in a CUDA kernel, ...

        async def outcome():
            async for event in dispatcher.engine.follow(job_id):
                if event.kind == "succeeded":
                    return event.data["result"]

        result = asyncio.run(outcome())
    record = dispatcher.engine.book.get(job_id)
    assert record.state == "succeeded" and record.attempts == 2, worker.log()
    assert len(result["labels"]) == 3 and result["labels"][0]["label"].startswith("thing number")
    assert "WorkerLostError" in worker.log() or "SIGKILL" in worker.log()


def test_no_worker_online_is_a_clear_error(redis_engine, client, tmp_path):
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path)
    # Not 0: Celery sometimes leaves a second copy of a killed child's job (the earlier test) in
    # the queue; a worker that gets it skips it, the job having ended.
    queued = client.llen("gpu")
    reply = say(adapter, f"/whatis {write_image(tmp_path / 'a.png')} labels: a, b")[-1]
    assert reply.error and "No clipbot worker is online for the 'gpu' queue" in reply.text
    assert client.llen("gpu") == queued  # nothing was queued into the void


def test_dead_worker_job_is_cancelled_and_never_runs_later(data_dir, redis_url, client, start_worker, tmp_path):
    # A worker that announced itself and then died without withdrawing (kill -9 of the whole host).
    client.hset("clipbot:workers", "ghost", json.dumps({"hostname": "ghost", "queues": ["gpu"], "pid": 1,
                                                        "at": time.time()}))
    settings = make_settings(data_dir, broker_url=redis_url, queue_timeout=1.5)
    from bot.app import open_app as app

    def cancelled():  # earlier tests in the session may have cancelled jobs of their own
        return {k.decode() for k in client.scan_iter("clipbot:job:*")
                if json.loads(client.get(k) or "{}").get("state") == "cancelled"}

    before = cancelled()
    with app(settings, start_worker=False) as dispatcher:
        adapter = LocalAdapter(dispatcher, out=io.StringIO(), output_dir=tmp_path)
        reply = say(adapter, f"/whatis {write_image(tmp_path / 'g.png')} labels: a, b")[-1]
        assert reply.error and "No worker picked up the job within 2 s; it was cancelled" in reply.text
        (job_key,) = cancelled() - before
        job_id = job_key.rsplit(":", 1)[1]
        # a worker that comes back later must not run the cancelled job
        worker = start_worker()
        worker.wait_ready(dispatcher.engine)
        wait_until(lambda: not client.llen("gpu"), timeout=10, what="the worker to take the queued job")
        time.sleep(0.5)
        record = dispatcher.engine.book.get(job_id)
        assert record.state == "cancelled" and record.attempts == 0


def test_cli_whatis_json_through_worker(redis_engine, start_worker, data_dir, redis_url, client, tmp_path):
    worker = start_worker()
    worker.wait_ready(redis_engine.engine)
    image = write_image(tmp_path / "c.png", color=(20, 200, 40))
    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "whatis", str(image), "--labels", "cat, dog, person", "--json"],
        cwd=ROOT, env=clipbot_env(data_dir, redis_url), capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr + worker.log()
    answer = json.loads(out.stdout)
    assert set(answer) == {"model", "labels", "unsure"} and answer["model"] == "tiny-test"
    assert sum(item["score"] for item in answer["labels"]) == pytest.approx(1, abs=1e-4)


def test_worker_without_broker_is_a_clear_error(data_dir):
    out = subprocess.run([sys.executable, "-m", "bot.cli", "worker"], cwd=ROOT, env=clipbot_env(data_dir, None),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "clipbot: `clipbot worker` needs CLIPBOT_BROKER_URL (e.g. redis://localhost:6379/0); without it, "
        "`clipbot run` runs everything in one process."
    ]


@pytest.mark.slow  # builds the real 80,000-prompt matrix
def test_worker_precomputes_imagenet_labels_at_start_once(redis_engine, start_worker, client, tmp_path):
    """CLIPBOT_WHATIS_PRECOMPUTE: each worker child prepares the ImageNet label matrix in the
    background at start; with two children one computes it and the other waits for it."""
    worker_data = tmp_path / "worker-data"
    worker = start_worker("--concurrency", "2", CLIPBOT_WHATIS_PRECOMPUTE="true", CLIPBOT_DATA_DIR=str(worker_data))
    worker.wait_ready(redis_engine.engine)  # ready at once: preparing runs in the background
    cache = worker_data / "cache" / "labels"
    wait_until(lambda: "preparing ImageNet-1k labels: 100%" in worker.log(), timeout=280,
               what="the worker to prepare the ImageNet labels", detail=worker.log)
    assert len(list(cache.glob("*.pt"))) == 2  # the label matrix and the "not sure" background
    assert worker.log().count("preparing ImageNet-1k labels: 100%") == 1, worker.log()

    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="precomputed")
    replies = say(adapter, f"/whatis {write_image(tmp_path / 'p.png')}")
    assert [r.progress for r in replies] == [None], worker.log()  # nothing left to prepare
    assert "labels: ImageNet-1k" in replies[-1].text and not replies[-1].error
