"""/quota and /queue: a user's fair share of the workers, and where their jobs are.

The limits and the accounting live in the engine (`engine.quotas`, `engine.fair`); these commands
only show them, and let an admin change their own space's limits.
"""

from __future__ import annotations

from typing import Annotated

from bot.commands import Reply, command
from bot.dispatch import CommandContext, requester_of
from bot.longjob import format_seconds, unfinished
from bot.markup import bold, code
from engine.errors import UserError
from engine.quotas import LIMIT_HELP, Usage


def _seconds(used: float, cap: float) -> str:
    return f"{used:.0f} of {cap:.0f} GPU-s" if cap else f"{used:.0f} GPU-s (no limit)"


def _jobs(used: int, cap: int) -> str:
    return f"{used} of {cap}" if cap else f"{used} (no limit)"


def usage_lines(usage: Usage, *, admin: bool) -> list[str]:
    limits = usage.limits
    lines = [bold("Your share today") + (" (you are an admin here: no limit applies to you)" if admin else ""),
             f"- long jobs queued or running: {_jobs(usage.long_jobs, limits.long_jobs)}",
             f"- quick jobs queued or running: {_jobs(usage.quick_jobs, limits.quick_jobs)}",
             f"- your GPU time: {_seconds(usage.user_gpu_seconds, limits.user_gpu_seconds)}",
             f"- this server's GPU time: {_seconds(usage.space_gpu_seconds, limits.space_gpu_seconds)}",
             f"- this channel's GPU time: {_seconds(usage.channel_gpu_seconds, limits.channel_gpu_seconds)}",
             f"Daily usage resets at 00:00 UTC, in {format_seconds(usage.resets_in)}."]
    if admin:
        lines.append(f"Change a limit for this server: {code('/quota limit: NAME value: N')} (0 = no limit); "
                     f"limits: {', '.join(LIMIT_HELP)}.")
    return lines


@command
async def quota(ctx: CommandContext, limit: Annotated[str, "admins: the limit to change"] = "",
                value: Annotated[float, "admins: its new value (0 = no limit)"] = -1.0) -> Reply:
    """Show your usage and limits; admins change this server's limits."""
    request, quotas = ctx.request, ctx.app.engine.quotas
    who = requester_of(request)
    if limit or value != -1.0:
        if not request.is_admin:
            raise UserError("Only admins can change limits.")
        if not limit or value == -1.0:
            raise UserError(f"Give both the limit and its value, e.g. {code('/quota limit: user_gpu_seconds value: 1800')}.")
        limits = await ctx.run_blocking(quotas.set_limit, request.platform, request.space_id, limit, value)
        return Reply(text=f"{bold(limit)} is now {getattr(limits, limit):g} for this server ({LIMIT_HELP[limit]}).",
                     ephemeral=True, data={"limits": limits.to_json()})
    usage = await ctx.run_blocking(quotas.usage, who)
    return Reply(text="\n".join(usage_lines(usage, admin=request.is_admin)), ephemeral=True, data=usage.to_json())


def _queue_view(ctx: CommandContext) -> tuple[list[str], dict]:
    engine, request = ctx.app.engine, ctx.request
    mine = [e for e in unfinished(ctx.app, request.platform) if e.get("user_id") == request.user_id]
    jobs, lines = [], [bold("Your jobs")]
    for entry in mine:
        record = engine.book.get(entry["job_id"])
        if record is None or record.finished:
            continue
        position = engine.queue_position(entry["job_id"], entry["queue"])
        where = f"position {position} in the queue" if position else record.state.lower()
        lines.append(f"- {entry.get('label') or entry['task']} ({code(entry['job_id'][:8])}): {where}")
        jobs.append({"job": entry["job_id"], "state": record.state, "position": position})
    if not jobs:
        lines.append("- none")
    depth = {name: engine.queue_depth(name) for name in engine.queues}
    shown = [f"{name}: {n}" for name, n in depth.items() if n is not None]
    lines.append(bold("Waiting for a worker") + ": " + (", ".join(shown) if shown else "nothing is queued here"))
    return lines, {"jobs": jobs, "depth": depth}


@command
async def queue(ctx: CommandContext) -> Reply:
    """Your queued and running jobs, and how many jobs wait for a worker."""
    lines, data = await ctx.run_blocking(_queue_view, ctx)
    return Reply(text="\n".join(lines), ephemeral=True, data=data)
