"""Remix forms on Discord: a modal (interaction callback type 9) built from `bot.forms`, and its
submission (interaction type 5) read back. The modal's custom_id is the encoded action, so a form
opened before a restart is still understood when it is submitted after; discord.py is told not to
keep the modal (it would only ever find the ones this process sent)."""

from __future__ import annotations

from typing import Any

import discord

from bot.actions import decode_action, encode_action
from bot.commands import Action, CommandSpec
from bot.forms import form_fields
from bot.markup import clean

__all__ = ["form_answers", "form_modal"]

_LABEL, _HINT, _VALUE, _TITLE = 45, 100, 4000, 45  # Discord's limits for modal text inputs


def form_modal(action: Action, spec: CommandSpec | None) -> discord.ui.Modal:
    modal = discord.ui.Modal(title=clean(action.label)[:_TITLE] or "Change first", custom_id=encode_action(action),
                             timeout=None)
    for field in form_fields(action, spec):
        style = discord.TextStyle.paragraph if field.long else discord.TextStyle.short
        modal.add_item(discord.ui.TextInput(label=field.label[:_LABEL], custom_id=field.name, style=style,
                                            required=False, default=field.value[:_VALUE] or None,
                                            placeholder=field.hint[:_HINT]))
    modal.stop()  # finished before it is sent: discord.py keeps no copy; on_form reads the submission
    return modal


def form_answers(data: dict[str, Any]) -> tuple[Action, dict[str, str]]:
    """(the action, the typed values by option) of a modal submission; ValueError if not ours."""
    action = decode_action(str(data.get("custom_id", "")))
    answers: dict[str, str] = {}
    for row in data.get("components") or ():
        for item in row.get("components") or ([row.get("component")] if row.get("component") else []):
            if item.get("custom_id") in action.ask:
                answers[item["custom_id"]] = str(item.get("value") or "")
    return action, answers
