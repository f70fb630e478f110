"""Safety commands: /safety (a channel's policy), /audit (the moderation log), /delete (a result).

The checks themselves are `engine.safety`'s (the settings this plugin registers:
CLIPBOT_SAFETY_*); features run them. Admin commands go through dispatch like any other, so
`clipbot audit --platform discord --space GUILD` reads the log from a shell.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from bot.commands import Reply, command
from bot.hookspecs import hookimpl
from bot.markup import bold, code, escape
from engine.errors import UserError
from engine.safety import (AuditEntry, AuditLog, SafetySettings, channel_policy, choose_policy, owner_of,
                           safety_settings, set_channel_policy)

__all__ = ["audit", "delete", "safety"]

_MEANING = {"allow": "pictures are not checked here", "blur": "pictures that look unsafe are blurred (and "
            "hidden behind a spoiler where the platform has them)", "stop": "a job whose picture looks unsafe "
            "is stopped"}


@command(admin_only=True)
async def safety(
    ctx,
    policy: Annotated[Literal["allow", "blur", "stop", "default"], "what this channel does with pictures that "
                      "look unsafe (default: the server-wide setting)"] = None,
) -> Reply:
    """Show or set what this channel does with generated pictures that look unsafe (admins)."""
    request = ctx.request
    if policy == "allow" and request.platform == "discord" and not request.channel_nsfw:
        raise UserError("On Discord, pictures are allowed unchecked only in age-restricted channels: mark this "
                        "channel age-restricted in its settings instead.")
    if policy is not None:
        await ctx.run_blocking(_set, ctx, None if policy == "default" else policy)
    stored = await ctx.run_blocking(channel_policy, ctx.engine.store, request.platform, request.space_id,
                                    request.channel_id)
    settings = safety_settings(ctx.engine)
    now = choose_policy(stored, nsfw=request.channel_nsfw, default=settings.policy)
    why = "set for this channel" if stored else ("age-restricted channel" if request.channel_nsfw else "the default")
    text = f"Safety here: {bold(now)} ({why}): {_MEANING[now]}. The prompt blocklist applies everywhere."
    return Reply(text=text, ephemeral=True, data={"policy": now, "channel": stored})


def _set(ctx, policy: str | None) -> None:
    request = ctx.request
    set_channel_policy(ctx.engine.store, request.platform, request.space_id, request.channel_id, policy)
    _log(ctx).record(request.platform, request.space_id, AuditEntry(
        action="policy", rule=policy or "default", user=request.user_id, channel=request.channel_id,
        by=request.user_id))


def _log(ctx) -> AuditLog:
    return AuditLog(ctx.engine.store, keep=safety_settings(ctx.engine).audit_keep)


@command(admin_only=True)
async def audit(ctx, last: Annotated[int, "how many of the newest entries (at most 100)"] = 10) -> Reply:
    """The moderation log of this server or workspace: refusals, blurred or stopped pictures, deletions (admins)."""
    if not 1 <= last <= 100:
        raise UserError("last must be between 1 and 100.")
    request = ctx.request
    entries = await ctx.run_blocking(_log(ctx).recent, request.platform, request.space_id, last)
    if not entries:
        return Reply(text="The moderation log is empty here.", ephemeral=True, data={"entries": []})
    lines = [bold(f"Moderation log, newest first ({len(entries)}):")] + [_line(e) for e in entries]
    return Reply(text="\n".join(lines), ephemeral=True, data={"entries": [e.to_json() for e in entries]})


def _line(entry: AuditEntry) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.at))
    parts = [when, bold(entry.action), f"rule {escape(entry.rule)}", f"user {code(entry.user)}",
             f"channel {code(entry.channel)}"]
    if entry.job_id:
        parts.append(f"job {code(entry.job_id)}")
    if entry.by and entry.by != entry.user:
        parts.append(f"by {code(entry.by)}")
    if entry.detail:
        parts.append(escape(entry.detail))
    return "- " + " · ".join(parts)


@command
async def delete(ctx, job: Annotated[str, "the job whose posted result to delete (its Delete button fills this in)"]) -> Reply:
    """Delete a picture the bot posted, with the job's files (its Delete button; the requester or an admin)."""
    request = ctx.request
    if request.delete_source is None:
        raise UserError("Use the Delete button on the message to delete it.")
    owner = await ctx.run_blocking(owner_of, ctx.engine.store, job)
    mine = owner is not None and owner.platform == request.platform and owner.user == request.user_id
    admin_here = request.is_admin and (owner is None or owner.space == request.space_id)
    if not (mine or admin_here):
        raise UserError("Only the person who asked for this picture, or an admin, can delete it.")
    await request.delete_source()
    await ctx.run_blocking(ctx.engine.forget_job, job)  # its files (picture, end state) go too
    await ctx.run_blocking(_log(ctx).record, request.platform, request.space_id, AuditEntry(
        action="deleted", rule="request" if mine else "admin", user=owner.user if owner else "",
        channel=request.channel_id, job_id=job, by=request.user_id))
    return Reply(text="Deleted.", ephemeral=True)


@hookimpl
def clipbot_commands():
    return [safety, audit, delete]


@hookimpl
def clipbot_task_modules():
    return []


@hookimpl
def clipbot_settings():
    return SafetySettings
