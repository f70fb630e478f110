"""A test plugin for the Discord end-to-end tests: it reports what the adapter put in each request,
offers a button, runs a long job with progress, and records the indexing hooks with the stored bytes.

Loaded by `clipbot run` through CLIPBOT_EXTRA_PLUGINS=tests.e2e.discord_probe.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import random
from pathlib import Path
from typing import Annotated, AsyncIterator

from bot.commands import Action, Image, Reply, command
from bot.hookspecs import hookimpl

PREFIX = "probe n="


def _log(record: dict) -> None:
    path = Path(os.environ["CLIPBOT_DATA_DIR"]) / "probe-events.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


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


@hookimpl
def clipbot_commands():
    return [probe, probe_admin, probe_long, probe_slow]


@hookimpl
def clipbot_task_modules():
    return []


@hookimpl
def clipbot_image_posted(app, event):
    _log({"posted": event.message_id, "space": event.space_id, "channel": event.channel_id,
          "thread": event.thread_id, "author": event.author_id, "author_name": event.author_name,
          "permalink": event.permalink, "text": event.text, "posted_at": event.posted_at,
          "files": [{"filename": a.filename, "content_type": a.content_type, "size": a.size, "source_id": a.source_id,
                     "sha256": hashlib.sha256(app.engine.blobs.get(a.key)).hexdigest()} for a in event.attachments]})


@hookimpl
def clipbot_message_deleted(app, event):
    _log({"deleted": event.message_id, "space": event.space_id, "channel": event.channel_id})


@hookimpl
def clipbot_channel_removed(app, event):
    _log({"removed": event.channel_id, "space": event.space_id})
