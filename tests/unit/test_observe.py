"""engine.observe on its own: the HTTP endpoints, readiness, JSON log lines, multiprocess metrics
(in a child interpreter, with real forked processes), the platform API error counters, and the
Grafana dashboard and README against the metrics that exist."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from engine.observe import (JsonFormatter, ObserveServer, Readiness, job_scope, metric_names, metrics,
                            redis_check, scrape_registry)
from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def sample(name: str, **labels: str) -> float:
    return scrape_registry().get_sample_value(name, labels) or 0.0


def test_endpoints_answer_health_readiness_and_metrics():
    state = {"reason": "models loading"}
    readiness = Readiness([lambda: None, lambda: state["reason"]])
    port = free_port()
    metrics().jobs.labels("unit.task", "succeeded").inc()
    with ObserveServer("127.0.0.1", port, registry=scrape_registry([readiness]), readiness=readiness).start():
        assert get(port, "/healthz")[0] == 200
        status, kind, body = get(port, "/readyz")
        assert (status, kind, json.loads(body)) == (503, "application/json", {"ready": False, "reason": "models loading"})
        assert 'clipbot_ready 0.0' in get(port, "/metrics")[2]
        state["reason"] = None
        assert get(port, "/readyz")[0] == 200
        status, kind, text = get(port, "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert re.search(r'^clipbot_jobs_total\{outcome="succeeded",task="unit.task"\} [1-9]', text, re.M), text
        assert 'clipbot_ready 1.0' in text
        assert get(port, "/nothing")[0] == 404
    with pytest.raises(urllib.error.URLError):  # closed: nothing listens any more
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3)


def test_a_taken_port_is_a_clear_error():
    from engine.errors import UserError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UserError, match="CLIPBOT_OBSERVE_PORT"):
            ObserveServer("127.0.0.1", taken.getsockname()[1], registry=scrape_registry(), readiness=lambda: (True, ""))


def test_a_failing_check_is_a_reason_not_a_crash():
    def broken() -> str:
        raise OSError("disk gone")

    assert Readiness([broken])() == (False, "OSError: disk gone")
    ready, reason = Readiness([redis_check(f"redis://127.0.0.1:{free_port()}/0")])()
    assert not ready and reason.startswith("Redis unreachable at 127.0.0.1:")


def test_observe_settings(tmp_path, monkeypatch):
    from engine.observe import BOT_PORT, WORKER_PORT, observe_address
    from tests.conftest import make_settings

    assert observe_address(make_settings(tmp_path), BOT_PORT) == ("127.0.0.1", 9108)
    assert observe_address(make_settings(tmp_path), WORKER_PORT) == ("127.0.0.1", 9109)
    monkeypatch.setenv("CLIPBOT_OBSERVE_PORT", "0")
    assert observe_address(make_settings(tmp_path), WORKER_PORT) is None
    monkeypatch.setenv("CLIPBOT_OBSERVE_PORT", "9200")
    monkeypatch.setenv("CLIPBOT_OBSERVE_HOST", "0.0.0.0")
    assert observe_address(make_settings(tmp_path), BOT_PORT) == ("0.0.0.0", 9200)


def record(message: str, **extra) -> logging.LogRecord:
    made = logging.getLogger("clipbot.test").makeRecord("clipbot.test", logging.WARNING, __file__, 1, message, (),
                                                         None, extra=extra)
    return made


def test_json_lines_carry_the_job_being_run():
    formatter = JsonFormatter()
    outside = json.loads(formatter.format(record("idle")))
    assert set(outside) == {"time", "level", "logger", "message"} and outside["level"] == "WARNING"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outside["time"])
    with job_scope("job-1234"):
        inside = json.loads(formatter.format(record("working, \"quoted\"\nand two lines")))
    assert inside["job_id"] == "job-1234" and inside["message"] == "working, \"quoted\"\nand two lines"
    assert "job_id" not in json.loads(formatter.format(record("idle again")))
    try:
        raise ValueError("broken")
    except ValueError:
        crashed = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "crash (ref %s)", ("ab12",),
                                                    sys.exc_info(), extra={"ref": "ab12"})
    line = formatter.format(crashed)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["ref"] == "ab12" and parsed["message"] == "crash (ref ab12)" and "ValueError: broken" in parsed["exc"]


_MULTIPROCESS = r"""
import os, sys
from engine import observe
path = observe.use_multiprocess_dir()
kids = []
for n in (1, 2):
    pid = os.fork()
    if pid == 0:
        recorded = observe.metrics()
        recorded.jobs.labels("t", "succeeded").inc(n)
        recorded.run_time.labels("t", "succeeded").observe(0.2 * n)
        recorded.prepared.set(1)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
registry = observe.scrape_registry()
print(registry.get_sample_value("clipbot_jobs_total", {"task": "t", "outcome": "succeeded"}))
print(registry.get_sample_value("clipbot_job_run_seconds_count", {"task": "t", "outcome": "succeeded"}))
print(observe.prepared_check(2)())
observe.forget_process(kids[0])
print(observe.prepared_check(2)())
print(registry.get_sample_value("clipbot_jobs_total", {"task": "t", "outcome": "succeeded"}))
print(path)
"""


def test_forked_processes_metrics_merge_and_exited_ones_stop_counting_as_prepared():
    out = subprocess.run([sys.executable, "-c", _MULTIPROCESS], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    jobs, runs, both, one, jobs_after, path = out.stdout.split("\n")[:6]
    assert (float(jobs), float(runs), both) == (3.0, 2.0, "None")
    assert one == "1 of 2 worker processes prepared" and float(jobs_after) == 3.0  # counts never go back
    assert not __import__("os").path.exists(path)  # the folder went with the process


def test_platform_api_errors_are_counted():
    from slack_sdk.http_retry.request import HttpRequest
    from slack_sdk.http_retry.response import HttpResponse
    from slack_sdk.http_retry.state import RetryState

    from bot.adapters.slack.post import CountingRetryHandler

    before = {status: sample("clipbot_platform_api_errors_total", platform="slack", status=status)
              for status in ("429", "api_error")}
    handler = CountingRetryHandler()
    request = HttpRequest(method="POST", url="https://slack.com/api/chat.postMessage", headers={})

    async def answer(status: int, body: dict) -> bool:
        return await handler.can_retry_async(state=RetryState(), request=request,
                                             response=HttpResponse(status_code=status, headers={}, body=body))

    assert asyncio.run(answer(429, {"ok": False, "error": "ratelimited"})) is False  # counts, never retries
    asyncio.run(answer(200, {"ok": False, "error": "channel_not_found"}))
    asyncio.run(answer(200, {"ok": True}))
    assert sample("clipbot_platform_api_errors_total", platform="slack", status="429") == before["429"] + 1
    assert sample("clipbot_platform_api_errors_total", platform="slack", status="api_error") == before["api_error"] + 1


def test_discord_rest_answers_are_counted_through_the_http_trace():
    import aiohttp
    from aiohttp import web

    from bot.adapters.discord.client import api_trace

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/limited", lambda _: web.json_response({"retry_after": 0.1}, status=429))
        app.router.add_get("/fine", lambda _: web.json_response({}))
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession(trace_configs=[api_trace()]) as session:
                for path in ("/limited", "/fine", "/limited"):
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        await response.read()
        finally:
            await runner.cleanup()

    before = sample("clipbot_platform_api_errors_total", platform="discord", status="429")
    asyncio.run(main())
    assert sample("clipbot_platform_api_errors_total", platform="discord", status="429") == before + 2
    assert sample("clipbot_platform_api_errors_total", platform="discord", status="200") == 0


def test_the_dashboard_queries_only_metrics_that_exist():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "clipbot.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", ())]
    queried = {name for expr in exprs for name in re.findall(r"\bclipbot_[a-z0-9_]+", expr)}
    known = metric_names()
    assert queried and not queried - known, f"the dashboard queries unknown metrics: {sorted(queried - known)}"
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in known}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in queried}
    assert families == shown, f"metrics no panel shows: {sorted(families - shown)}"


def test_readme_lists_every_metric_and_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Metrics and health", 1)[1]
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in metric_names()}
    missing = [name for name in sorted(families) if name not in section]
    assert not missing, f"README's Metrics and health section lacks {missing}"
    for needed in ("CLIPBOT_OBSERVE_PORT", "CLIPBOT_OBSERVE_HOST", "CLIPBOT_LOG_FORMAT", "/metrics", "/healthz",
                   "/readyz", "9108", "9109"):
        assert needed in section
