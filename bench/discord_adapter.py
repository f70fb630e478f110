"""Discord adapter under a burst: how fast interactions are deferred and answered, against the floor.

    python bench/discord_adapter.py [--requests 100] [--json out.json]

A burst of N slash commands arrives at once from the fake Discord (tests/fakes/discord_fake.py,
127.0.0.1) over the real gateway and REST paths of discord.py. Three runs, same process:

1. bare       a plain discord.py client that defers and edits "ok": the transport's floor
2. /labels    clipbot's adapter, a command that answers without the engine (request building with
              the member's readable channels, dispatch, rendering)
3. /whatis    clipbot's adapter, /whatis with an attachment and 3 labels on the embedded engine
              (tiny-test CLIP): download + check + blob + classify + chart + file upload

Defer latency (INTERACTION_CREATE sent → interaction callback received) matters most: Discord
drops interactions not acknowledged within 3 s. Reports p50/p99 and the ratio to bare. Never fails.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def _in_thread(main) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run() -> None:
        loop = asyncio.new_event_loop()
        box["loop"] = loop
        box["stop"] = asyncio.Event()
        try:
            loop.run_until_complete(main(box))
        except Exception as exc:  # reported, never raised: a benchmark reports
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _stop(thread: threading.Thread, box: dict) -> None:
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)


def _burst(fake, world, n: int, command: str, options: dict, attachments: dict | None) -> dict:
    records = [fake.slash(world["guild"], world["channel"], world["user"], command, options, attachments)
               for _ in range(n)]

    def answer_call(calls, r):
        # The answer: the placeholder edited, or (ephemeral answers) a follow-up after it was deleted.
        done = [c for c in calls if c.status == 200 and f"/{r.token}" in c.path and (
            c.method == "PATCH" and c.path.endswith("/messages/@original") and not (c.json or {}).get("flags", 0) & 128
            or c.method == "POST" and c.path.startswith("/webhooks/"))]
        return done[-1] if done else None

    fake.wait_for(lambda f: all(answer_call(f.calls, r) for r in records),
                  float(os.environ.get("BENCH_WAIT", 600)), f"{n} answers to /{command}")
    calls = fake.calls
    defer, answer = [], []
    for r in records:
        cb = next(c for c in calls if c.path.startswith(f"/interactions/{r.id}/"))
        defer.append(cb.at - r.dispatched_at)
        answer.append(answer_call(calls, r).at - r.dispatched_at)
    return {"defer": _stats(defer), "answer": _stats(answer)}


def _stats(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50_ms": statistics.median(values) * 1000, "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))] * 1000,
            "max_ms": values[-1] * 1000}


def _world(fake) -> dict:
    guild = fake.add_guild()
    mods = fake.add_role(guild, "mods", 1 << 5)
    channel = fake.add_channel(guild, "general")
    for i in range(20):  # a realistic server: readable channels are computed over all of them
        fake.add_channel(guild, f"room-{i}", overwrites=[{"id": guild, "type": 0, "deny": 1 << 10}] if i % 3 else [])
    return {"guild": guild, "channel": channel, "user": fake.add_member(guild, "mod", roles=[mods])}


def bench_bare(n: int) -> dict:
    import discord
    import yarl

    from tests.fakes.discord_fake import BOT_TOKEN, FakeDiscord

    fake = FakeDiscord().start()
    world = _world(fake)
    discord.http.Route.BASE = fake.api_base
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(fake.gateway_url)
    fake.commands[world["guild"]] = [{"id": "1", "name": "ping", "type": 1, "options": []}]

    async def main(box):
        client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.5)

        @client.event
        async def on_interaction(interaction):
            await interaction.response.defer(thinking=True)
            await interaction.edit_original_response(content="ok")

        task = asyncio.create_task(client.start(BOT_TOKEN))
        await box["stop"].wait()
        await client.close()
        await asyncio.gather(task, return_exceptions=True)

    thread, box = _in_thread(main)
    fake.wait_for(lambda f: any(s["identified"] for s in f._sessions), 60, "bare client")
    time.sleep(1.0)
    result = _burst(fake, world, n, "ping", {}, None)
    _stop(thread, box)
    fake.stop()
    return result


def bench_clipbot(n: int, data_dir: Path) -> dict:
    import discord

    from bot.adapters.discord import DiscordSettings
    from bot.adapters.discord.client import serve
    from bot.app import open_app
    from bot.config import Settings
    from tests.fakes.discord_fake import BOT_TOKEN, FakeDiscord

    fake = FakeDiscord().start()
    world = _world(fake)
    settings = Settings(_env_file=None, data_dir=data_dir, clip_model="tiny-test", device="cpu", log_level="WARNING")
    config = DiscordSettings(_env_file=None, token=BOT_TOKEN, api_base=fake.api_base, gateway_url=fake.gateway_url,
                             dev_guild=int(world["guild"]))
    out: dict = {}

    def drive() -> None:
        fake.wait_for(lambda f: world["guild"] in f.commands and any(s["identified"] for s in f._sessions), 60, "clipbot")
        time.sleep(1.0)
        image = {"image": ("red.png", _png(), "image/png")}
        _burst(fake, world, 1, "whatis", {"labels": "red, green, blue"}, image)  # warm: model + label cache
        out["labels"] = _burst(fake, world, n, "labels", {"action": "show"}, None)
        out["whatis"] = _burst(fake, world, n, "whatis", {"labels": "red, green, blue"}, image)
        out["rate_limited"] = len(fake.rate_limited)

    async def main() -> None:
        # The bot's loop is the main thread's, as in `clipbot run`; the burst is driven from a thread.
        stop = asyncio.Event()
        bot = asyncio.create_task(serve(app, settings, config, stop))
        try:
            await asyncio.to_thread(drive)
        except Exception as exc:  # reported, never raised: a benchmark reports
            out["error"] = repr(exc)
        stop.set()
        await asyncio.gather(bot, return_exceptions=True)

    with open_app(settings) as app:
        asyncio.run(main())
    discord.http.Route.BASE = "https://discord.com/api/v10"
    fake.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets, a few iterations: proves the bench still runs (the tests run it)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({"requests": 5})
    import logging

    logging.basicConfig(level=getattr(logging, os.environ.get("BENCH_LOG", "ERROR")))
    results = {"requests": args.requests}
    if not os.environ.get("BENCH_SKIP_BARE"):
        results["bare"] = bench_bare(args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        results.update(bench_clipbot(args.requests, Path(tmp)))
    bare = results.get("bare") or results["labels"]
    print(f"burst of {args.requests} interactions, fake Discord on 127.0.0.1, discord.py client")
    print(f"{'path':<10} {'defer p50':>10} {'defer p99':>10} {'answer p50':>11} {'answer p99':>11} {'defer p50 vs bare':>18}")
    for name in ("bare", "labels", "whatis"):
        r = results.get(name)
        if not r:
            continue
        ratio = r["defer"]["p50_ms"] / bare["defer"]["p50_ms"]
        print(f"{name:<10} {r['defer']['p50_ms']:>8.1f}ms {r['defer']['p99_ms']:>8.1f}ms "
              f"{r['answer']['p50_ms']:>9.1f}ms {r['answer']['p99_ms']:>9.1f}ms {ratio:>17.2f}x")
    print(f"429 answers caused: {results.get('rate_limited')}" + (f"; error: {results['error']}" if "error" in results else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
