"""What belongs to no feature: /help, /cancel (any long job), /quota and /queue (fair shares), and the
core engine queues."""

from __future__ import annotations

from typing import Annotated

from bot.commands import Reply, command
from bot.longjob import cancel
from bot.shares import queue, quota
from bot.hookspecs import hookimpl
from bot.markup import bold, code
from engine.tasks import CORE_QUEUES


@command(name="help")
async def help_(ctx, command: Annotated[str, "a command to explain"] = "") -> Reply:
    """List the commands, or explain one."""
    commands = {n: s for n, s in ctx.dispatcher.commands.items() if s.offered_on(ctx.request.platform)}
    if command:
        spec = ctx.dispatcher.spec(command.lstrip("/"))
        lines = [f"{bold('/' + spec.name)}: {spec.description}", f"Usage: {code(spec.usage())}"]
        lines += [f"- {o.name}: {o.description or o.type.__name__}" for o in spec.options]
        return Reply(text="\n".join(lines), ephemeral=True,
                     data={"command": spec.name, "usage": spec.usage(),
                           "options": [{"name": o.name, "required": o.required} for o in spec.options]})
    lines = [bold("Commands:")]
    lines += [f"- /{s.name}: {s.description}" for s in sorted(commands.values(), key=lambda s: s.name)]
    lines.append(f"Type {code('/help <command>')} for its options.")
    return Reply(text="\n".join(lines), ephemeral=True, data={"commands": sorted(commands)})


@hookimpl
def clipbot_commands():
    return [help_, cancel, quota, queue]


@hookimpl
def clipbot_task_modules():
    return []


@hookimpl
def clipbot_queues():
    return list(CORE_QUEUES)
