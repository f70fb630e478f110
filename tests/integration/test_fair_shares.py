"""Fair shares on the distributed engine: round-robin between users inside a fair queue, per-user
job limits, GPU-seconds charged by the worker and refused past the daily limit, limits changed
by an admin from chat. Real Redis, real `clipbot worker` processes (tests/sample_tasks.py)."""

from __future__ import annotations

import asyncio
import io
import time

import pytest

from bot.adapters.local import LocalAdapter
from bot.app import open_app
from engine.quotas import QuotaExceeded, Requester
from tests.conftest import make_settings
from tests.support.polling import wait_until

SAMPLE = {"CLIPBOT_EXTRA_PLUGINS": "tests.sample_plugin"}
ANN = Requester(platform="discord", user_id="ann", space_id="g1", channel_id="c1")
BOB = Requester(platform="discord", user_id="bob", space_id="g1", channel_id="c2")


@pytest.fixture
def app(data_dir, redis_url, tmp_path):
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("clipbot:fair:*"):  # earlier tests' held-back jobs
        client.delete(key)
    for key in client.scan_iter("clipbot:quota:*"):
        client.delete(key)
    client.delete("gpu-long", "clipbot:workers")
    settings = make_settings(data_dir, broker_url=redis_url, queue_timeout=120, job_timeout=300,
                             extra_plugins=["tests.sample_plugin"], quota_long_jobs=0)
    with open_app(settings, start_worker=False) as dispatcher:
        yield dispatcher


def _starts(path) -> list[tuple[str, float]]:
    if not path.exists():
        return []
    return [(name, float(at)) for name, at in (line.split() for line in path.read_text().splitlines())]


def _long_worker(app, start_worker) -> None:
    """One `clipbot worker` child on gpu-long: jobs start one at a time, in the order handed out."""
    worker = start_worker("--queues", "gpu-long", "--concurrency", "1", **SAMPLE)
    worker.wait_ready(app.engine, "gpu-long")


def _wait_ended(engine, jobs) -> None:
    for job in jobs:
        wait_until(lambda: (r := engine.book.get(job)) is not None and r.finished, timeout=60, what="jobs to end")


def test_round_robin_order_between_users(redis_url):
    """The order alone (no worker): the broker queue is drained by hand, one message at a time."""
    import redis

    from engine.fair import FairQueue, backlog_key

    client, name = redis.Redis.from_url(redis_url), "fair-order-test"
    client.delete(name, *client.scan_iter(f"clipbot:fair:{name}:*"))  # an earlier run's keys
    published: list[str] = []

    def publish(job_id: str) -> bool:
        if job_id == "gone":  # ended while it waited: dropped, takes no place
            return False
        published.append(job_id)
        client.lpush(name, job_id)
        return True

    fair = FairQueue(client, name, ahead=1, publish=publish)
    for i in range(5):
        fair.push(f"a{i}", "ann")
    assert fair.pump() == 1 and fair.pump() == 0  # one message ahead of the workers, no more
    fair.push("b0", "bob"), fair.push("gone", "bob"), fair.push("b1", "bob"), fair.push("c0", "cy")
    assert fair.handed_out() + len(fair.waiting()) == 9 and fair.position("b0") == 2 and fair.position("a4") == 9
    assert client.llen(backlog_key(name)) == 8  # what KEDA and the depth metric read: held back, not handed out
    while client.rpop(name) is not None:  # a worker takes the next message, and pumps
        fair.pump()
    # turns alternate; Bob's dropped job had taken his second turn (a tag), so b1 comes a turn later
    assert published == ["a0", "b0", "c0", "a1", "a2", "b1", "a3", "a4"]
    assert fair.handed_out() == 0 and fair.waiting() == [] and client.llen(backlog_key(name)) == 0


def test_a_users_first_job_waits_behind_at_most_one_job_of_a_user_with_ten(app, start_worker, tmp_path):
    _long_worker(app, start_worker)
    engine, starts = app.engine, tmp_path / "starts.txt"
    jobs = [engine.submit("sample.turn", {"path": str(starts), "name": f"A{i}", "seconds": 0.4}, queue="gpu-long",
                          requester=ANN) for i in range(10)]
    wait_until(lambda: _starts(starts), timeout=60, what="Ann's first job to start")
    asked = time.time()
    bob = engine.submit("sample.turn", {"path": str(starts), "name": "B0", "seconds": 0.1}, queue="gpu-long",
                        requester=BOB)
    assert engine.queue_position(bob, "gpu-long") in (1, 2), "Bob's job is not next in line"
    wait_until(lambda: len(_starts(starts)) == 11, timeout=120, what="all 11 jobs to start", every=0.2)
    order = [name for name, _ in _starts(starts)]
    bob_at = order.index("B0")
    ann_between = [n for n, at in _starts(starts)[:bob_at] if at > asked]
    assert len(ann_between) <= 1, f"Bob waited behind {ann_between} (order {order})"
    assert order[bob_at + 1:], "Bob's job ran last: no fairness at all"
    assert sorted(order) == sorted([f"A{i}" for i in range(10)] + ["B0"])  # nothing lost, nothing twice
    _wait_ended(engine, [*jobs, bob])
    assert engine.queue_depth("gpu-long") == 0


def test_a_job_cancelled_while_held_back_never_runs(app, start_worker, tmp_path):
    _long_worker(app, start_worker)
    engine, starts = app.engine, tmp_path / "starts.txt"
    first = [engine.submit("sample.turn", {"path": str(starts), "name": f"A{i}", "seconds": 0.5}, queue="gpu-long",
                           requester=ANN) for i in range(3)]
    held = engine.submit("sample.turn", {"path": str(starts), "name": "gone"}, queue="gpu-long", requester=ANN)
    assert engine.queue_position(held, "gpu-long") is not None
    assert engine.cancel(held)
    assert engine.queue_position(held, "gpu-long") is None
    _wait_ended(engine, first)
    assert "gone" not in [name for name, _ in _starts(starts)]
    assert engine.book.get(held).state == "cancelled"


def test_limits_refuse_with_the_limit_and_when_it_resets(app, start_worker, tmp_path):
    _long_worker(app, start_worker)
    engine, starts = app.engine, tmp_path / "starts.txt"
    quotas = engine.quotas
    quotas.set_limit("discord", "g1", "long_jobs", 2)
    kwargs = {"path": str(starts), "name": "x", "seconds": 0.5}
    two = [engine.submit("sample.turn", kwargs, queue="gpu-long", requester=ANN) for _ in range(2)]
    with pytest.raises(QuotaExceeded) as refused:
        engine.submit("sample.turn", kwargs, queue="gpu-long", requester=ANN)
    assert refused.value.limit == "long_jobs" and "2 long jobs" in str(refused.value)
    admin = Requester(platform="discord", user_id="ann", space_id="g1", channel_id="c1", is_admin=True)
    two.append(engine.submit("sample.turn", kwargs, queue="gpu-long", requester=admin))  # admins are exempt
    engine.submit("sample.turn", kwargs, queue="gpu-long", requester=BOB)  # Bob has his own count
    _wait_ended(engine, two)

    # the worker charged the run time of Ann's jobs to her, her server and her channel
    usage = quotas.usage(ANN)
    assert usage.long_jobs == 0 and usage.user_gpu_seconds >= 1.0 and usage.space_gpu_seconds >= usage.user_gpu_seconds
    assert usage.channel_gpu_seconds == pytest.approx(usage.user_gpu_seconds)
    quotas.set_limit("discord", "g1", "user_gpu_seconds", 1)
    with pytest.raises(QuotaExceeded) as refused:
        engine.submit("sample.turn", kwargs, queue="gpu-long", requester=ANN)
    assert refused.value.limit == "user_gpu_seconds" and "00:00 UTC" in str(refused.value)
    # the change was for Ann's server only
    assert quotas.limits("discord", "g2").user_gpu_seconds == app.settings.quota_user_gpu_seconds


def test_quota_and_queue_from_chat(app, start_worker, tmp_path):
    _long_worker(app, start_worker)
    user = LocalAdapter(app, out=io.StringIO(), output_dir=tmp_path, user_id="cy", is_admin=False)
    admin = LocalAdapter(app, out=io.StringIO(), output_dir=tmp_path, user_id="root", is_admin=True)
    said = lambda who, line: asyncio.run(who.handle_line(line))[-1]  # noqa: E731
    refused = said(user, "/quota limit: long_jobs value: 1")
    assert refused.error and "Only admins" in refused.text
    changed = said(admin, "/quota limit: long_jobs value: 1")
    assert not changed.error and changed.data["limits"]["long_jobs"] == 1, changed.text
    shown = said(user, "/quota")
    assert shown.data["limits"]["long_jobs"] == 1 and "long jobs queued or running: 0 of 1" in shown.text
    queue = said(user, "/queue")
    assert queue.data["jobs"] == [] and queue.data["depth"]["gpu-long"] == 0
