"""/imagine through the real machine Redis and real `clipbot worker` processes: cancel, continue,
reroll, a worker killed mid-run (the child, and the whole worker), a bot restarted mid-job."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys

import pytest
import redis

from bot.adapters.local import LocalAdapter, action_command
from engine.checkpoints import checkpoints_for
from tests.conftest import ROOT, clipbot_env
from tests.support.polling import wait_until

LONG = "gpu-long"


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    # Announcements of earlier tests' workers; a killed one (a test here uses a 3 s visibility
    # timeout) would count as live for a minute and stop the next worker from starting.
    client.delete("clipbot:workers", "clipbot:nodes")
    return client


def say(adapter, line):
    return asyncio.run(adapter.handle_line(line))


def _final(replies, worker):
    final = replies[-1]
    assert final.final and not final.error, f"{final.text}\n{worker.log()}"
    return final


def _wait(predicate, what, timeout=120, worker=None):
    return wait_until(predicate, timeout=timeout, what=what, detail=worker.log if worker else None)


def _submit(app, line):
    """Start a request in a background thread's event loop; returns (job id, thread, replies list)."""
    import threading

    adapter = LocalAdapter(app, out=io.StringIO(), output_dir=ROOT / ".pytest-out-unused", channel_id="imagine")
    request = adapter.parse(line)
    replies: list = []
    got_job = threading.Event()

    async def drive():
        async for reply in app.handle(request):
            replies.append(reply)
            if reply.actions and reply.actions[0].command == "cancel":
                got_job.set()
        got_job.set()

    thread = threading.Thread(target=lambda: asyncio.run(drive()), daemon=True)
    thread.start()
    assert got_job.wait(60), replies
    return replies[0].actions[0].options["job"], thread, replies


def test_continue_and_reroll_through_a_worker(redis_engine, start_worker, client, tmp_path):
    worker = start_worker("--queues", LONG)
    worker.wait_ready(redis_engine.engine, queue=LONG)
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="imagine-1")
    first = _final(say(adapter, "/imagine a lighthouse steps: 12 size: 64 every: 4 seed: 21"), worker)
    assert first.data["snapshots"] == ["step-0000.png", "step-0004.png", "step-0008.png", "step-0012.png"]
    actions = {a.label: a for a in first.actions}
    more = _final(say(adapter, action_command(actions["Continue"]) + " steps: 8"), worker)
    assert more.data["steps"] == 20 and more.data["loss"][:12] == first.data["loss"]
    again = _final(say(adapter, action_command(actions["Reroll"])), worker)
    assert again.data["seed"] != 21 and again.images[0].data != first.images[0].data
    assert not list(client.scan_iter("clipbot:checkpoint:*"))  # finished jobs leave no checkpoint


def test_cancel_stops_within_one_step(redis_engine, start_worker, client):
    # A checkpoint every step makes the worker's step count visible from here, step by step.
    worker = start_worker("--queues", LONG, CLIPBOT_IMAGINE_CHECKPOINT_EVERY="1")
    worker.wait_ready(redis_engine.engine, queue=LONG)
    job, thread, replies = _submit(redis_engine, "/imagine a slow river steps: 1000 size: 64 every: 100")
    checkpoints = checkpoints_for(redis_engine.engine)
    _wait(lambda: (checkpoints.meta(job) or {}).get("step", 0) >= 5, "five steps", worker=worker)
    redis_engine.engine.cancel(job)
    at_cancel = checkpoints.meta(job)["step"]
    thread.join(60)
    assert replies[-1].final and "cancelled" in replies[-1].text, worker.log()
    # The task's last progress event names the last step it completed (the reporter flushes it).
    events = redis_engine.engine.book.events.events(job)
    last_step = max(e.data["step"] for e in events if e.kind == "progress")
    assert at_cancel <= last_step <= at_cancel + 1  # the step in flight may finish; no later one starts
    assert redis_engine.engine.book.get(job).state == "cancelled"
    # Issue 13, defect 9: a cancelled /imagine kept its checkpoint (and its blob) for a day
    _wait(lambda: not client.exists(f"clipbot:checkpoint:{job}"), "the checkpoint to go", worker=worker)
    assert checkpoints.meta(job) is None


def _run_killed(redis_engine, start_worker, kill, tmp_path, **worker_env):
    env = {"CLIPBOT_IMAGINE_CHECKPOINT_EVERY": "20", **worker_env}
    worker = start_worker("--queues", LONG, **env)
    worker.wait_ready(redis_engine.engine, queue=LONG)
    job, thread, replies = _submit(redis_engine, "/imagine a red kite steps: 200 size: 64 every: 20 seed: 8")
    checkpoints = checkpoints_for(redis_engine.engine)
    _wait(lambda: (checkpoints.meta(job) or {}).get("step", 0) >= 40, "two checkpoints", worker=worker)
    kill(worker)
    last_checkpoint = checkpoints.meta(job)["step"]  # nothing can write one now
    fresh = start_worker("--queues", LONG, **env) if worker.proc.poll() is not None else worker
    thread.join(300)
    final = replies[-1]
    assert final.final and not final.error, f"{final.text}\n{worker.log()}\n{fresh.log()}"
    return job, final, last_checkpoint, fresh


@pytest.mark.slow
def test_child_killed_mid_run_resumes_from_its_checkpoint(redis_engine, start_worker, client, tmp_path):
    def kill_child(worker):
        (child,) = worker.children()
        os.kill(child, signal.SIGKILL)  # the OOM killer, a CUDA fault, ...

    job, final, last_checkpoint, worker = _run_killed(redis_engine, start_worker, kill_child, tmp_path)
    record = redis_engine.engine.book.get(job)
    assert record.attempts == 2
    runs = record.result["runs"]
    # the second attempt started at the last checkpoint: no step before it ran twice
    assert runs == [{"attempt": 1, "from_step": 0}, {"attempt": 2, "from_step": last_checkpoint}]
    assert final.data["steps"] == 200 and len(final.data["loss"]) == 200
    assert len(final.data["snapshots"]) == 11  # the start, then at most max_snapshots
    # and resuming changed nothing: an uninterrupted run with the same seed draws the same picture
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="imagine-2")
    clean = _final(say(adapter, "/imagine a red kite steps: 200 size: 64 every: 20 seed: 8"), worker)
    assert clean.data["loss"] == final.data["loss"]
    assert clean.images[0].data == final.images[0].data
    # the timelapse frames came through the kill in the checkpoint: the same frames as the clean run
    # (200 steps, at most 60 frames: the start and every 4th step), the ones before the kill included
    blobs = redis_engine.engine.blobs
    killed = _frames(blobs, record.result["frames"])
    assert [step for step, _ in killed] == list(range(0, 201, 4)) and record.result["frame_count"] == 51
    assert killed == _frames(blobs, redis_engine.engine.book.get(clean.data["job"]).result["frames"])


def _frames(blobs, key):
    from plugins.imagine.timelapse import unpack

    return [(step, picture.tobytes()) for step, picture in unpack(blobs.get(key))]


def _killed_after_two_checkpoints(redis_engine, worker, line):
    """Submit `line`, kill the worker's child once the job has checkpointed twice; the final reply
    of the resumed run, after checking it resumed from the last checkpoint."""
    job, thread, replies = _submit(redis_engine, line)
    checkpoints = checkpoints_for(redis_engine.engine)
    _wait(lambda: (checkpoints.meta(job) or {}).get("step", 0) >= 20, "two checkpoints", worker=worker)
    (child,) = worker.children()
    os.kill(child, signal.SIGKILL)
    last_checkpoint = checkpoints.meta(job)["step"]
    thread.join(300)
    killed = _final(replies, worker)
    record = redis_engine.engine.book.get(job)
    assert record.result["runs"] == [{"attempt": 1, "from_step": 0}, {"attempt": 2, "from_step": last_checkpoint}]
    return killed


@pytest.mark.slow
def test_a_zoom_out_whose_child_is_killed_resumes_from_its_checkpoint_and_draws_the_same_picture(
        redis_engine, start_worker, client, tmp_path):
    worker = start_worker("--queues", LONG, CLIPBOT_IMAGINE_CHECKPOINT_EVERY="10")
    worker.wait_ready(redis_engine.engine, queue=LONG)
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="imagine-3")
    first = _final(say(adapter, "/imagine a red kite steps: 4 size: 32 every: 2 seed: 8"), worker)
    line = f"/imagine from_job: {first.data['job']} mode: zoom-out steps: 60 every: 20"
    killed = _killed_after_two_checkpoints(redis_engine, worker, line)
    assert killed.data["size"] == "48x48" and killed.data["parent"] == first.data["job"]
    # the resumed run kept its frozen region and its place: an uninterrupted zoom draws the same picture
    clean = _final(say(adapter, line), worker)
    assert clean.data["loss"] == killed.data["loss"] and clean.images[0].data == killed.images[0].data


@pytest.mark.slow
def test_a_blend_whose_child_is_killed_resumes_from_its_checkpoint_with_its_pictures(
        redis_engine, start_worker, client, tmp_path):
    from tests.support.pictures import write_image

    # the pictures are read on the quick queue, the blend runs on the long one: one worker takes both
    worker = start_worker("--queues", f"gpu,{LONG}", CLIPBOT_IMAGINE_CHECKPOINT_EVERY="10")
    worker.wait_ready(redis_engine.engine, queue=LONG)
    red, blue = (write_image(tmp_path / f"{name}.png", color=rgb) for name, rgb in (("red", (220, 20, 20)),
                                                                                  ("blue", (20, 20, 220))))
    line = f"/blend images: {red} {blue} prompt: a kite weights: 1 -0.5 steps: 50 size: 32 every: 10 seed: 6"
    killed = _killed_after_two_checkpoints(redis_engine, worker, line)
    assert killed.data["pictures"] == [{"source": "red.png", "weight": 1.0}, {"source": "blue.png", "weight": -0.5}]
    # the resumed run read the same stored embeddings: an uninterrupted blend draws the same picture
    adapter = LocalAdapter(redis_engine, out=io.StringIO(), output_dir=tmp_path, channel_id="imagine-4")
    clean = _final(say(adapter, line), worker)
    assert clean.data["loss"] == killed.data["loss"] and clean.images[0].data == killed.images[0].data


@pytest.mark.slow
def test_whole_worker_killed_a_fresh_worker_finishes(redis_engine, start_worker, client, tmp_path):
    def kill_all(worker):
        os.killpg(worker.proc.pid, signal.SIGKILL)  # parent and children: the host went away
        worker.proc.wait(10)

    # The unacked job is redelivered once it is older than the visibility timeout; a fresh worker
    # sweeps for such jobs as it starts.
    job, final, last_checkpoint, _ = _run_killed(redis_engine, start_worker, kill_all, tmp_path,
                                                 CLIPBOT_VISIBILITY_TIMEOUT="3")
    runs = redis_engine.engine.book.get(job).result["runs"]
    assert runs[0] == {"attempt": 1, "from_step": 0} and runs[-1]["from_step"] == last_checkpoint
    assert all(run["from_step"] >= last_checkpoint for run in runs[1:])
    assert final.data["steps"] == 200


def _bot_killed_and_restarted(env: dict, worker, line: str, progress: str) -> str:
    """Type `line` into a `clipbot run` local chat, kill the bot (its whole process group) once it
    shows `progress`, start it again with nothing to read: what the second one printed, after
    checking it exited cleanly and picked the job up. The worker carries on throughout."""
    bot = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--adapter", "local"], cwd=ROOT, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           start_new_session=True, text=True)
    bot.stdin.write(line + "\n")
    bot.stdin.flush()
    seen: list[str] = []

    def shown_progress() -> bool:  # it is running and the bot has shown progress
        printed = bot.stdout.readline()
        assert printed, "".join(seen) + worker.log()
        seen.append(printed)
        return progress in "".join(seen)

    wait_until(shown_progress, timeout=300, what=f"the bot to show {progress}", detail=worker.log, every=0)
    os.killpg(bot.pid, signal.SIGKILL)  # the bot dies mid-job; the worker carries on
    bot.wait(10)
    again = subprocess.run([sys.executable, "-m", "bot.cli", "run", "--adapter", "local"], cwd=ROOT, env=env,
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    out = again.stdout
    assert again.returncode == 0, out + again.stderr
    assert "(following 1 unfinished job from last time)" in out
    return out


@pytest.mark.slow
def test_a_restarted_bot_still_delivers_the_result(redis_engine, start_worker, data_dir, redis_url, client, tmp_path):
    worker = start_worker("--queues", LONG)
    worker.wait_ready(redis_engine.engine, queue=LONG)
    out = _bot_killed_and_restarted(clipbot_env(data_dir, redis_url), worker,
                                    "/imagine a stone bridge steps: 150 size: 64 every: 15 seed: 4", "step 15/150")
    assert "seed 4 · 150 steps · 64x64" in out and "final.png" in out
    assert "[Reroll] /imagine from_job: " in out
    assert not list(client.scan_iter("clipbot:longjob:*"))  # delivered: nothing left to resume


@pytest.mark.slow
def test_a_bot_restarted_mid_blend_delivers_it_with_its_pictures_and_buttons(
        redis_engine, start_worker, data_dir, redis_url, client, tmp_path):
    from tests.support.pictures import write_image

    worker = start_worker("--queues", f"gpu,{LONG}")
    worker.wait_ready(redis_engine.engine, queue=LONG)
    red, blue = (write_image(tmp_path / f"{name}.png", color=rgb) for name, rgb in (("red", (220, 20, 20)),
                                                                                  ("blue", (20, 20, 220))))
    out = _bot_killed_and_restarted(
        clipbot_env(data_dir, redis_url), worker,
        f"/blend images: {red} {blue} weights: 1 0.5 steps: 100 size: 32 every: 10 seed: 4", "step 10/100")
    assert "A blend of 2 pictures" in out and "blending red.png (1), blue.png (0.5)" in out, out
    assert "[Reroll] /imagine from_job: " in out and "[Upscale x2] /imagine from_job: " in out


def test_a_waiting_job_shows_its_place_in_the_queue(redis_engine, start_worker, client):
    worker = start_worker("--queues", LONG)
    worker.wait_ready(redis_engine.engine, queue=LONG)
    busy, busy_thread, _ = _submit(redis_engine, "/imagine a busy bee steps: 1000 size: 64 every: 100")
    _wait(lambda: redis_engine.engine.book.get(busy).state == "started", "the first job to start", worker=worker)
    waiting, waiting_thread, replies = _submit(redis_engine, "/imagine a patient cat steps: 4 size: 64 every: 2")
    _wait(lambda: any("position 1 in the queue" in r.text for r in replies), "a queue position", worker=worker)
    redis_engine.engine.cancel(busy)
    waiting_thread.join(120)
    busy_thread.join(60)
    assert replies[-1].final and not replies[-1].error, replies[-1].text
