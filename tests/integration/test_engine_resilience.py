"""The distributed engine when things go wrong: Redis restarts or is down, a whole worker is
killed, a job kills its worker every time, a worker child hangs; and 200 requests at once.
Real redis-server, real `clipbot worker` processes (tests/sample_tasks.py through
tests/sample_plugin.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from engine.app import create_engine
from engine.errors import JobFailed
from tests.conftest import ROOT, WorkerProcess, clipbot_env, make_settings, write_image
from tests.support.polling import wait_until

SAMPLE = {"CLIPBOT_EXTRA_PLUGINS": "tests.sample_plugin"}


@pytest.fixture
def workers(data_dir, tmp_path):
    started: list[WorkerProcess] = []

    def start(url: str, *args: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(data_dir, url, tmp_path / f"worker{len(started)}.log", *args, **{**SAMPLE, **env})
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def engine_for(url: str, tmp_path, **settings):
    return create_engine(make_settings(tmp_path, broker_url=url, **settings))


def wait_for(predicate, timeout: float, what: str):
    return wait_until(predicate, timeout=timeout, what=what)


async def outcome(engine, job_id):
    async for event in engine.follow(job_id):
        if event.kind == "succeeded":
            return event.data["result"]


@pytest.mark.slow
def test_followers_carry_on_through_a_redis_restart(own_redis, workers, tmp_path):
    engine = engine_for(own_redis.url, tmp_path)
    worker = workers(own_redis.url, "--pool", "solo")
    worker.wait_ready(engine)
    job_ids = [engine.submit("sample.steps", {"n": 2, "delay": 0.05}) for _ in range(50)]

    async def main():
        answers = [asyncio.create_task(outcome(engine, j)) for j in job_ids]
        await asyncio.sleep(0.5)  # every follower is waiting; the worker is a few jobs in
        await asyncio.to_thread(own_redis.stop)
        await asyncio.sleep(4)  # Redis is down: followers and the worker must ride it out
        await asyncio.to_thread(own_redis.start)
        return await asyncio.gather(*answers, return_exceptions=True)

    results = asyncio.run(main())
    assert [r["done"] if isinstance(r, dict) else r for r in results] == [2] * 50, worker.log()


def test_200_concurrent_requests_share_one_reader(redis_url, workers, tmp_path):
    import redis

    engine = engine_for(redis_url, tmp_path)
    worker = workers(redis_url, "--pool", "solo")
    worker.wait_ready(engine)
    info = redis.Redis.from_url(redis_url)
    db = info.connection_pool.connection_kwargs.get("db", 0)

    def connections():  # to this test's db only: other processes share the server
        return sum(1 for c in info.client_list() if int(c["db"]) == db)

    before = connections()

    async def main():
        answers = [asyncio.create_task(engine.run("sample.steps", {"n": 1, "delay": 0.01})) for _ in range(200)]
        await asyncio.sleep(1.0)  # all 200 submitted and followed; the worker is still going
        during = await asyncio.to_thread(connections)
        return await asyncio.gather(*answers), during

    results, during = asyncio.run(main())
    assert [r["done"] for r in results] == [1] * 200
    # Not one per request: followers share one blocking reader and <= 4 command connections;
    # submitting runs on asyncio's small thread pool, each thread with a Redis and a broker connection.
    assert during - before < 50, (before, during)


@pytest.mark.slow
def test_whole_worker_killed_job_is_requeued_and_not_run_twice(redis_url, workers, tmp_path):
    fast = {"CLIPBOT_WORKER_DEAD_AFTER": "2"}
    engine = engine_for(redis_url, tmp_path, worker_dead_after=2)
    first = workers(redis_url, **fast)
    first.wait_ready(engine)
    job_id = engine.submit("sample.steps", {"n": 20, "delay": 0.2})
    wait_for(lambda: engine.book.get(job_id).state == "started", 60, "the job to start")
    os.killpg(first.proc.pid, signal.SIGKILL)  # parent and children at once: nobody says goodbye
    first.proc.wait(10)

    second = workers(redis_url, **fast)
    result = asyncio.run(outcome(engine, job_id))
    record = engine.book.get(job_id)
    assert result["done"] == 20 and record.state == "succeeded" and record.attempts == 2, second.log()
    assert f"/{first.proc.pid}" not in record.worker and "queueing the job again" in second.log()

    # The dead worker's message comes back one day (visibility timeout): it must not run again.
    engine.celery.send_task("sample.steps", args=(job_id,), kwargs={"n": 20, "delay": 0.2}, task_id=job_id,
                            queue="gpu")
    wait_for(lambda: "already ended" in second.log(), 30, "the redelivery to be skipped")
    assert engine.book.get(job_id).attempts == 2


def _unacked(client, job_id: str) -> dict[bytes, float]:
    """kombu's deliveries of `job_id` that no worker acknowledged (its `unacked` hash), with the
    time each was handed out (`unacked_index`)."""
    return {tag: client.zscore("unacked_index", tag) for tag, raw in client.hgetall("unacked").items()
            if job_id.encode() in raw}


@pytest.mark.slow
def test_a_dead_workers_delivery_restored_after_its_job_expired_never_runs(redis_url, workers, tmp_path):
    import redis

    # Compressed times: a dead worker is noticed after 2 s, a finished job's record is kept 2 s, and
    # Redis hands out an unacknowledged delivery again after 30 s (in production: 60 s, 1 h, 2 h).
    fast = {"CLIPBOT_WORKER_DEAD_AFTER": "2", "CLIPBOT_JOB_TTL": "2", "CLIPBOT_VISIBILITY_TIMEOUT": "30"}
    engine = engine_for(redis_url, tmp_path, worker_dead_after=2, job_ttl=2, visibility_timeout=30)
    client = redis.Redis.from_url(redis_url)
    runs = tmp_path / "runs.txt"  # each run of the job appends a line
    first = workers(redis_url, "--pool", "solo", **fast)
    first.wait_ready(engine)
    job_id = engine.submit("sample.tally", {"path": str(runs), "n": 10, "delay": 0.2})
    wait_for(lambda: runs.exists(), 60, "the job to start")
    os.killpg(first.proc.pid, signal.SIGKILL)  # the whole worker: its delivery is never acknowledged
    first.proc.wait(10)
    ((tag, handed_out),) = _unacked(client, job_id).items()

    second = workers(redis_url, "--pool", "solo", **fast)  # reaps the job and runs it to the end
    asyncio.run(outcome(engine, job_id))
    assert "queueing the job again" in second.log() and runs.read_text() == "attempt 1\nattempt 2\n"
    wait_for(lambda: engine.book.get(job_id) is None, 30, "the finished job's record to expire")
    assert tag in _unacked(client, job_id)  # the dead worker's delivery is still waiting in Redis

    # Once the delivery is older than the visibility timeout, a worker starting up hands it out again.
    wait_for(lambda: time.time() > handed_out + 30 + 1, 60, "the visibility timeout to pass")
    third = workers(redis_url, "--pool", "solo", **fast)
    third.wait_ready(engine)
    logs = lambda: second.log() + third.log()  # noqa: E731 (either worker may take it)
    wait_for(lambda: "has no record" in logs() or runs.read_text().count("\n") > 2, 60,
             "the restored delivery to be taken")
    assert runs.read_text() == "attempt 1\nattempt 2\n", logs()  # it did not run again, for nobody
    assert not _unacked(client, job_id) and not client.hexists("clipbot:running", job_id)
    assert not [k for k in client.scan_iter(f"clipbot:*{job_id}*")], logs()  # no record, events, flags


def test_a_worker_with_another_visibility_timeout_than_the_fleet_refuses_to_start(data_dir, redis_url, workers,
                                                                                  tmp_path):
    engine = engine_for(redis_url, tmp_path)
    running = workers(redis_url, "--pool", "solo")  # the default: 7200 s
    running.wait_ready(engine)
    other = subprocess.run([sys.executable, "-m", "bot.cli", "worker", "--pool", "solo"], cwd=ROOT,
                           env=clipbot_env(data_dir, redis_url, CLIPBOT_VISIBILITY_TIMEOUT="600", **SAMPLE),
                           capture_output=True, text=True, timeout=120)
    said = [line for line in other.stderr.splitlines() if line.startswith("clipbot:")]
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert len(said) == 1 and "CLIPBOT_VISIBILITY_TIMEOUT is 600 s here but the running worker clipbot@" in said[0]
    assert "uses 7200 s" in said[0]
    assert [w["pid"] for w in engine.live_workers()] == [running.proc.pid]  # it never served


@pytest.mark.slow
def test_a_job_that_kills_its_worker_fails_at_the_attempt_cap(redis_url, workers, tmp_path):
    import redis

    engine = engine_for(redis_url, tmp_path)
    worker = workers(redis_url)
    worker.wait_ready(engine)
    job_id = engine.submit("sample.die", {})
    with pytest.raises(JobFailed, match="stopped the worker running it 3 times, so I gave up on it"):
        asyncio.run(outcome(engine, job_id))
    assert engine.book.get(job_id).attempts == 3, worker.log()
    # its last attempt's process died with it: the job is not left on the running list
    assert not redis.Redis.from_url(redis_url).hexists("clipbot:running", job_id)


def test_hung_child_is_no_longer_advertised_and_its_job_is_retried(redis_url, workers, tmp_path):
    engine = engine_for(redis_url, tmp_path, worker_dead_after=2)
    worker = workers(redis_url, CLIPBOT_WORKER_DEAD_AFTER="2")
    worker.wait_ready(engine)
    job_id = engine.submit("sample.steps", {"n": 20, "delay": 0.1})
    wait_for(lambda: engine.book.get(job_id).state == "started", 60, "the job to start")
    child = int(engine.book.get(job_id).worker.rsplit("/", 1)[1])
    assert child in worker.children()
    os.kill(child, signal.SIGSTOP)  # wedged: alive, holding its job, doing nothing
    try:
        wait_for(lambda: all(w["process"] != child for w in engine.live_workers("gpu")), 30,
                 "the hung child to drop out of the advertised workers")
        result = asyncio.run(outcome(engine, job_id))
    finally:
        try:
            os.kill(child, signal.SIGCONT)
        except ProcessLookupError:
            pass
    record = engine.book.get(job_id)
    assert result["done"] == 20 and record.attempts == 2 and not record.worker.endswith(f"/{child}")
    assert "sent no heartbeat" in worker.log()
    assert any(w["pid"] == worker.proc.pid for w in engine.live_workers("gpu"))  # a fresh child took over


def test_worker_children_share_the_cpu_cores_among_torch_threads(redis_url, workers, tmp_path):
    cores = len(os.sched_getaffinity(0))
    engine = engine_for(redis_url, tmp_path)
    # OMP_NUM_THREADS=cores: what torch would use in each child by itself (and no cap below it)
    worker = workers(redis_url, "--concurrency", "2", OMP_NUM_THREADS=str(cores))
    worker.wait_ready(engine)
    result = asyncio.run(engine.run("sample.threads", {}))
    assert result["torch"] == max(1, cores // 2), worker.log()


# ---- Redis down -------------------------------------------------------------------------------
def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there once the socket is closed


def test_cli_with_redis_down_says_so_in_one_line(data_dir, tmp_path):
    image = write_image(tmp_path / "r.png")
    out = subprocess.run([sys.executable, "-m", "bot.cli", "whatis", str(image), "--labels", "cat, dog"], cwd=ROOT,
                         env=clipbot_env(data_dir, _dead_url()), capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "can't reach Redis at 127.0.0.1:" in lines[0] and "connection refused" in lines[0]


def test_worker_with_redis_down_retries_in_one_line_and_stops_cleanly(data_dir):
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], cwd=ROOT,
                            env=clipbot_env(data_dir, _dead_url()), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(8)  # room for a couple of retries after start-up
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=30)
    lines = err.strip().splitlines()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert len(lines) >= 2 and all("can't reach Redis at 127.0.0.1:" in line and "retrying in" in line
                                   for line in lines), err
