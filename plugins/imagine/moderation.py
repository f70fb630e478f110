"""/imagine's side of safety (light: no torch): the prompt's blocklist check and the channel's
policy, decided in the handler before anything is queued or posted (`engine.safety`).

The embedding checks need the model: the task runs them (`plugins.imagine.tasks`), with the
policy this module put in the job.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from engine.errors import UserError
from engine.safety import AuditEntry, AuditLog, Moderation, blocked_rule, channel_policy, choose_policy, refusal
from engine.safety import safety_settings
from plugins.imagine.plan import ImagineJob
from plugins.imagine.prompts import parse_prompts

if TYPE_CHECKING:
    from bot.dispatch import CommandContext

__all__ = ["moderated", "positive_texts"]


def positive_texts(prompt: str) -> list[str]:
    """The parts of a prompt the picture is pulled towards (a negative weight pushes away); none
    for a /blend without text."""
    if not prompt.strip():
        return []
    return [p.text for p in parse_prompts(prompt, need_positive=False) if p.weight > 0]


def moderated(ctx: "CommandContext", job: ImagineJob) -> ImagineJob:
    """`job` with the channel's moderation (policy, who, where), or the refusal line (logged)
    when its prompt holds a blocklisted phrase. Blocking: store reads and writes."""
    request = ctx.request
    settings = safety_settings(ctx.engine)
    phrases = settings.phrases()
    for text in positive_texts(job.prompt):
        rule = blocked_rule(text, phrases)
        if rule is not None:
            AuditLog(ctx.engine.store, keep=settings.audit_keep).record(request.platform, request.space_id, AuditEntry(
                action="refused", rule=rule, user=request.user_id, channel=request.channel_id,
                detail=f"prompt (blocklist): {job.prompt[:200]}"))
            raise UserError(refusal(rule))
    stored = channel_policy(ctx.engine.store, request.platform, request.space_id, request.channel_id)
    policy = choose_policy(stored, nsfw=request.channel_nsfw, default=settings.policy)
    moderation = Moderation(policy=policy, platform=request.platform, space=request.space_id,
                            channel=request.channel_id, user=request.user_id)
    return dataclasses.replace(job, safety=moderation.to_json())
