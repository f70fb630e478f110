"""Built-in commands that belong to no feature: /help."""

from __future__ import annotations

from typing import Annotated

from bot.commands import Reply, command
from bot.dispatch import ROADMAP
from bot.hookspecs import hookimpl


@command(name="help")
async def help_(ctx, command: Annotated[str, "a command to explain"] = "") -> Reply:
    """List the commands, or explain one."""
    commands = ctx.dispatcher.commands
    if command:
        spec = ctx.dispatcher.spec(command.lstrip("/"))
        lines = [f"/{spec.name}: {spec.description}", f"Usage: {spec.usage()}"]
        lines += [f"  {o.name}: {o.description or o.type.__name__}" for o in spec.options]
        return Reply(text="\n".join(lines), ephemeral=True)
    lines = ["Commands:"]
    lines += [f"  /{s.name}: {s.description}" for s in sorted(commands.values(), key=lambda s: s.name)]
    planned = [f"  /{name}: not built yet ({what})" for name, what in ROADMAP.items() if name not in commands]
    if planned:
        lines += ["Coming later:", *planned]
    lines.append("Type /help <command> for its options.")
    return Reply(text="\n".join(lines), ephemeral=True)


@hookimpl
def clipbot_commands():
    return [help_]


@hookimpl
def clipbot_task_modules():
    return []
