"""A third-party-style plugin for adapter tests: no platform code, like any plugin.

- /echo TEXT answers TEXT with the requester's id and a button that echoes TEXT + "!" (a click
  is a new request from the clicker, also after a restart);
- /whoami shows what the adapter put in the request (space, channel, readable channels, admin);
- /slow is long-running: progress replies with snapshots, then a final picture;
- the index hooks append each event as a JSON line to $CLIPBOT_PROBE_EVENTS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
from typing import Annotated

from bot.commands import Action, Image, Reply, command
from bot.hookspecs import hookimpl
from bot.markup import bold


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


def _record(kind: str, event) -> None:
    path = os.environ.get("CLIPBOT_PROBE_EVENTS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"kind": kind, **dataclasses.asdict(event)}, default=str) + "\n")


@hookimpl
def clipbot_commands():
    return [echo, whoami, slow]


@hookimpl
def clipbot_image_posted(app, event):
    _record("posted", event)


@hookimpl
def clipbot_message_deleted(app, event):
    _record("deleted", event)


@hookimpl
def clipbot_channel_removed(app, event):
    _record("removed", event)
