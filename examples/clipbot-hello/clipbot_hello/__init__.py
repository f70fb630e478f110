"""An example clipbot plugin: one command answered in the bot, one that runs an engine task.

Light module: imported by every bot process, so it must not import torch.
"""

from __future__ import annotations

from typing import Annotated

from bot.commands import Reply, command
from bot.hookspecs import hookimpl
from bot.markup import escape
from engine.errors import UserError


@command
async def hello(ctx, name: Annotated[str, "who to greet"] = "") -> Reply:
    """Say hello."""
    who = name or f"<@{ctx.request.user_id}>"
    return Reply(text=f"Hello, {escape(who)}!", data={"greeted": who})


@command
async def shout(ctx, text: Annotated[str, "what to shout"], times: Annotated[int, "1 to 5"] = 1):
    """Shout some text, computed by an engine worker."""
    if not 1 <= times <= 5:
        raise UserError("times must be between 1 and 5.")
    result = await ctx.engine.run("hello.shout", {"text": text, "times": times}, queue="io")
    yield Reply(text=escape(result["text"]), final=True, data={"text": result["text"]})


@hookimpl
def clipbot_commands():
    return [hello, shout]


@hookimpl
def clipbot_task_modules():
    return ["clipbot_hello.tasks"]
