"""The observe endpoints of real processes: a real `clipbot worker` (prefork, tiny presets, the
sample tasks) runs real jobs submitted through a real engine; both sides' /metrics are scraped over
HTTP, /readyz is probed as compose and k8s probe it (urllib), and the worker's JSON log is read."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import urllib.error
import urllib.request

import pytest

from bot.adapters.local import LocalAdapter
from engine.errors import JobFailed
from tests.conftest import LoggedProcess, WorkerProcess, make_settings, write_image

SAMPLE = {"CLIPBOT_EXTRA_PLUGINS": "tests.sample_plugin"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port: int, path: str) -> tuple[int, str] | None:
    """(status, body) as the deploy probes see it (urllib raises on a non-2xx); None: nobody listens yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return None


def samples(port: int) -> dict[tuple[str, frozenset], float]:
    """/metrics parsed: (sample name, its labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = probe(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def until(worker: WorkerProcess, predicate, what: str, timeout: float = 90):
    """The predicate's first true value, failing with the worker's log if it exits first."""
    return LoggedProcess.wait_ready(worker, predicate, what=what, timeout=timeout)


async def run(engine, task: str, kwargs: dict, queue: str) -> str:
    job_id = await asyncio.to_thread(engine.submit, task, kwargs, queue=queue)
    try:
        async for _event in engine.follow(job_id):
            pass
    except JobFailed:
        pass
    return job_id


def test_worker_and_bot_metrics_readiness_and_json_logs(data_dir, redis_url, tmp_path):
    from bot.app import open_app
    from engine.observe import serve_client

    worker_port, bot_port = free_port(), free_port()
    worker = WorkerProcess(data_dir, redis_url, tmp_path / "worker.log", **SAMPLE,
                           CLIPBOT_OBSERVE_PORT=str(worker_port), CLIPBOT_LOG_FORMAT="json")
    try:
        first = until(worker, lambda: probe(worker_port, "/readyz"), "the worker's /readyz")
        assert first[0] == 503 and json.loads(first[1])["ready"] is False, first  # listening, not ready yet
        assert probe(worker_port, "/healthz")[0] == 200
        until(worker, lambda: probe(worker_port, "/readyz")[0] == 200, "the worker to be ready")

        settings = make_settings(data_dir, broker_url=redis_url, observe_port=bot_port, extra_plugins=["tests.sample_plugin"])
        with open_app(settings, start_worker=False) as app, serve_client(app.engine):
            before = samples(bot_port)
            adapter = LocalAdapter(app, out=io.StringIO(), output_dir=tmp_path, channel_id="observe-1")
            reply = asyncio.run(adapter.handle_line(f"/whatis {write_image(tmp_path / 'red.png')} labels: cat, dog"))[-1]
            assert reply.final and not reply.error, f"{reply.text}\n{worker.log()}"
            asyncio.run(run(app.engine, "sample.steps", {"n": 3}, "gpu"))
            asyncio.run(run(app.engine, "sample.fail", {"kind": "user"}, "io"))
            crashed = asyncio.run(run(app.engine, "sample.fail", {"kind": "internal"}, "io"))
            error = app.engine.book.get(crashed).error
            bot = samples(bot_port)
            assert probe(bot_port, "/readyz")[0] == 200 and value(bot, "clipbot_ready") == 1
        assert (value(bot, "clipbot_jobs_submitted_total", task="whatis.classify", outcome="queued")
                - value(before, "clipbot_jobs_submitted_total", task="whatis.classify", outcome="queued")) == 1
        assert ("clipbot_queue_depth", frozenset({("queue", "gpu")})) in bot

        scraped = samples(worker_port)
        assert value(scraped, "clipbot_jobs_total", task="whatis.classify", outcome="succeeded") == 1
        assert value(scraped, "clipbot_jobs_total", task="sample.steps", outcome="succeeded") == 1
        assert value(scraped, "clipbot_jobs_total", task="sample.fail", outcome="failed") == 2
        assert value(scraped, "clipbot_job_queue_wait_seconds_count", task="sample.fail") == 2
        assert value(scraped, "clipbot_job_run_seconds_count", task="sample.fail", outcome="failed") == 2
        assert value(scraped, "clipbot_job_run_seconds_bucket", task="whatis.classify", outcome="succeeded",
                     le="+Inf") == 1
        assert value(scraped, "clipbot_model_load_seconds_count", kind="clip") >= 1  # in the child, merged here
        assert value(scraped, "clipbot_worker_prepared") == 1

        # The crash's reply names a reference; the worker's JSON log line of that crash has it, and the job id.
        assert "Something went wrong on the worker (ref " in error and "internal detail" not in error
        ref = error.split("(ref ", 1)[1].split(")", 1)[0]
        lines = [json.loads(line) for line in worker.run_log().splitlines() if line.startswith("{")]
        assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
        (crash,) = [line for line in lines if f"ref {ref}" in line["message"]]
        assert crash["job_id"] == crashed and crash["ref"] == ref and crash["level"] == "ERROR"
        assert "internal detail that users must not see" in crash["exc"]
    finally:
        worker.stop()
    assert probe(worker_port, "/healthz") is None  # the endpoints went with the process


def test_worker_without_redis_is_alive_but_not_ready(data_dir, tmp_path):
    closed, port = free_port(), free_port()  # nothing listens on `closed`
    worker = WorkerProcess(data_dir, f"redis://127.0.0.1:{closed}/0", tmp_path / "worker.log",
                           CLIPBOT_OBSERVE_PORT=str(port))
    try:
        status, body = until(worker, lambda: probe(port, "/readyz"), "the worker's /readyz")
        assert status == 503 and "Redis unreachable" in json.loads(body)["reason"], body
        assert probe(port, "/healthz")[0] == 200
        with pytest.raises(urllib.error.HTTPError):  # the deploy files' probe command fails
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=3)
    finally:
        worker.stop()
