"""Slack's 3-second ack budget under a burst: how fast `clipbot run` (HTTP mode) acks signed slash
commands, and how soon their answers reach Slack, against a bare signed-endpoint reference.

    python bench/slack_ack.py [--requests 200] [--concurrency 50] [--json out.json]

1. reference   an aiohttp endpoint in this process that checks the signature (slack_sdk's
               SignatureVerifier) and answers 200: the floor for "receive, verify, ack"
2. clipbot     `python -m bot.cli run` in HTTP mode (the real slack-bolt app), the fake Slack of the
               tests on 127.0.0.1, the test plugin's /echo (answers with a message and a button)

Reports ack p50/p99 for both, their ratio, the share of acks within Slack's 3 s, and for clipbot
the p50/p99 from the request to its answer arriving at the (fake) Web API. A benchmark reports,
it never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from tests.fakes.slack_fake import FakeSlack, signed_headers, slash_command  # noqa: E402

SECRET = "bench-signing-secret"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _burst(url: str, bodies: list[str], concurrency: int) -> tuple[list[float], dict[str, float]]:
    """POST every body signed; ack latencies (ms) and each marker's send time."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, body: str) -> None:
        async with gate:
            headers = signed_headers(SECRET, body, content_type="application/x-www-form-urlencoded")
            start = time.perf_counter()
            sent[body] = time.time()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    latencies.append((time.perf_counter() - start) * 1000)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, b) for b in bodies))
    return latencies, sent


async def _reference(bodies: list[str], concurrency: int) -> list[float]:
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(SECRET)

    async def handle(request: web.Request) -> web.Response:
        body = await request.text()
        ok = verifier.is_valid_request(body, dict(request.headers))
        return web.Response(status=200 if ok else 401)

    app = web.Application()
    app.add_routes([web.post("/slack/events", handle)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        latencies, _ = await _burst(f"http://127.0.0.1:{port}/slack/events", bodies, concurrency)
    finally:
        await runner.cleanup()
    return latencies


def _start_clipbot(fake: FakeSlack, data_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPBOT_", "SLACK_"))}
    env.update(CLIPBOT_CLIP_MODEL="tiny-test", CLIPBOT_DEVICE="cpu", CLIPBOT_DATA_DIR=str(data_dir),
               CLIPBOT_LOG_LEVEL="INFO", PYTHONUNBUFFERED="1", SLACK_BOT_TOKEN=fake.bot_token,
               SLACK_SIGNING_SECRET=SECRET, CLIPBOT_SLACK_API_URL=fake.api_url, CLIPBOT_SLACK_PORT="0",
               CLIPBOT_SLACK_HOST="127.0.0.1", CLIPBOT_EXTRA_PLUGINS="tests.support.probe_plugin",
               CLIPBOT_SLACK_CHANNEL_INTERVAL="0")
    log_path = data_dir / "bot.log"
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], cwd=ROOT, env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for line in log_path.read_text(errors="replace").splitlines():
            if "HTTP mode listening on " in line:
                return proc, line.rsplit("listening on ", 1)[1].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"clipbot run did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets, a few iterations: proves the bench still runs (the tests run it)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({"requests": 10, "concurrency": 5})

    fake = FakeSlack().start()
    fake.add_user("U1", ["C1"])
    markers = [uuid.uuid4().hex[:12] for _ in range(args.requests)]
    bodies = [urlencode(slash_command(fake.team_id, "C1", "U1", "/echo", m)) for m in markers]
    reference = asyncio.run(_reference(bodies, args.concurrency))

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_clipbot(fake, Path(tmp))
        try:
            # warm-up: first request pays auth.test and lazy imports
            asyncio.run(_burst(url, [urlencode(slash_command(fake.team_id, "C1", "U1", "/echo", "warm"))], 1))
            fake.wait_call("chat.postMessage", lambda c: "warm" in c.params.get("text", ""), timeout=60)
            acks, sent = asyncio.run(_burst(url, bodies, args.concurrency))
            fake.wait_for(lambda: len(fake.calls_to("chat.postMessage")) >= args.requests + 1, timeout=300,
                          what="every answer")
        finally:
            proc.terminate()
            proc.wait(30)
            fake.stop()
    answered = {}
    for call in fake.calls_to("chat.postMessage"):
        for body, marker in zip(bodies, markers):
            if marker in call.params.get("text", ""):
                answered[marker] = (call.at - sent[body]) * 1000
    figures = {
        "requests": args.requests, "concurrency": args.concurrency,
        "reference_ack_ms": {"p50": round(_pct(reference, 0.5), 2), "p99": round(_pct(reference, 0.99), 2)},
        "clipbot_ack_ms": {"p50": round(_pct(acks, 0.5), 2), "p99": round(_pct(acks, 0.99), 2)},
        "ack_p99_ratio_vs_reference": round(_pct(acks, 0.99) / _pct(reference, 0.99), 2),
        "acks_within_3s": f"{sum(a < 3000 for a in acks)}/{args.requests}",
        "answer_ms": {"p50": round(statistics.median(answered.values()), 1),
                      "p99": round(_pct(list(answered.values()), 0.99), 1), "answered": len(answered)},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
