"""The test plugin every adapter test loads (CLIPBOT_EXTRA_PLUGINS=tests.support.probe_plugin), a
third-party plugin with no platform code:

- /probe N reports what the adapter put in the request, with a +1 button; /probe_admin is admin-only;
  /probe_long and /probe_slow are jobs with progress and pictures (long-running, and answered through
  the interaction);
- /echo TEXT answers TEXT with the requester's id and a button that echoes TEXT + "!" (a click is a
  new request from the clicker, also after a restart); /whoami shows the request too; /slow is
  long-running with snapshots, then a final picture;
- the index hooks append each event as a JSON line to $CLIPBOT_PROBE_EVENTS (default
  $CLIPBOT_DATA_DIR/probe-events.jsonl): the event's fields and `kind`, plus the short keys the Discord
  tests read (`posted`/`deleted`/`removed`, `space`, `channel`, `files` with the stored bytes' sha256).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Annotated, AsyncIterator

from bot.commands import Action, Image, Reply, command
from bot.hookspecs import hookimpl
from bot.markup import bold

PREFIX = "probe n="


def _record(kind: str, event, short: dict) -> None:
    path = os.environ.get("CLIPBOT_PROBE_EVENTS") or Path(os.environ["CLIPBOT_DATA_DIR"]) / "probe-events.jsonl"
    record = {"kind": kind, **dataclasses.asdict(event), **short}
    with open(path, "a") as out:
        out.write(json.dumps(record, default=str) + "\n")


@command
async def probe(ctx, n: Annotated[int, "a counter the button increments"] = 0) -> Reply:
    """Say what the adapter told clipbot about this request (test plugin)."""
    r = ctx.request
    data = {"n": n, "user": r.user_id, "admin": r.is_admin, "space": r.space_id, "channel": r.channel_id,
            "thread": r.thread_id, "readable": sorted(r.readable_channels or ()), "conversation": r.conversation,
            "platform": r.platform, "name": r.user_name}
    return Reply(text=PREFIX + json.dumps(data), data=data,
                 actions=(Action(label="+1", command="probe", options={"n": n + 1}, style="primary"),))


@command(admin_only=True)
async def probe_admin(ctx) -> Reply:
    """Only for admins (test plugin)."""
    return Reply(text="admin ok")


def noise_png(side: int, seed: int = 0) -> bytes:
    from PIL import Image as PILImage

    rng = random.Random(seed)
    im = PILImage.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


async def _steps(steps: int, delay: float, big: int, text: str = "") -> AsyncIterator[Reply]:
    # `text` is echoed as it came (no bot.markup.escape): the renderer must keep it literal anyway.
    for i in range(1, steps + 1):
        await asyncio.sleep(delay)
        yield Reply(text=f"step {i}/{steps} {text}".rstrip(), progress=i / steps,
                    images=(Image(noise_png(32, i), f"step-{i}.png"),))
    yield Reply(text=f"finished {steps} steps {text}".rstrip(),
                images=(Image(noise_png(big), "final.png", "the result"),), final=True)


@command(long_running=True)
async def probe_long(ctx, steps: int = 6, delay: float = 0.3, big: int = 400, text: str = "") -> AsyncIterator[Reply]:
    """A long job with progress and a big final picture (test plugin)."""
    async for reply in _steps(steps, delay, big, text):
        yield reply


@command
async def probe_slow(ctx, steps: int = 3, delay: float = 1.0, text: str = "") -> AsyncIterator[Reply]:
    """A slow job answered through the interaction (test plugin)."""
    async for reply in _steps(steps, delay, 64, text):
        yield reply


def _png(shade: int) -> bytes:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (16, 16), (shade, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


@command
async def echo(ctx, text: Annotated[str, "what to say"]) -> Reply:
    """Say the text back, with a button that says it louder."""
    return Reply(text=f"echo from {ctx.request.user_id}: {bold(text)}",
                 actions=(Action(label="Louder", command="echo", options={"text": text + "!"}, style="primary"),))


@command
async def whoami(ctx) -> Reply:
    """Show what the platform told me about this request."""
    r = ctx.request
    readable = sorted(r.readable_channels) if r.readable_channels is not None else None
    data = {"user": r.user_id, "space": r.space_id, "channel": r.channel_id, "thread": r.thread_id,
            "admin": r.is_admin, "readable": readable, "platform": r.platform}
    return Reply(text="whoami " + json.dumps(data, sort_keys=True), data=data)


@command(long_running=True)
async def slow(ctx, steps: Annotated[int, "how many steps"] = 3):
    """Pretend to draw something, slowly."""
    for step in range(1, steps + 1):
        await asyncio.sleep(0.3)
        yield Reply(text=f"step {step}/{steps}", progress=step / steps,
                    images=(Image(_png(step * 20), f"step-{step:04d}.png", f"step {step}"),))
    yield Reply(text=f"done after {steps} steps", images=(Image(_png(250), "final.png", "final"),), final=True,
                actions=(Action(label="Again", command="slow", options={"steps": steps}),))


@hookimpl
def clipbot_commands():
    return [probe, probe_admin, probe_long, probe_slow, echo, whoami, slow]


@hookimpl
def clipbot_task_modules():
    return []


@hookimpl
def clipbot_image_posted(app, event):
    _record("posted", event, {
        "posted": event.message_id, "space": event.space_id, "channel": event.channel_id,
        "thread": event.thread_id, "author": event.author_id, "author_name": event.author_name,
        "permalink": event.permalink, "text": event.text, "posted_at": event.posted_at,
        "files": [{"filename": a.filename, "content_type": a.content_type, "size": a.size, "source_id": a.source_id,
                   "sha256": hashlib.sha256(app.engine.blobs.get(a.key)).hexdigest()} for a in event.attachments]})


@hookimpl
def clipbot_message_deleted(app, event):
    _record("deleted", event, {"deleted": event.message_id, "space": event.space_id, "channel": event.channel_id})


@hookimpl
def clipbot_channel_removed(app, event):
    _record("removed", event, {"removed": event.channel_id, "space": event.space_id})
