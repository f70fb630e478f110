"""Remix forms on Slack: a modal opened with `views.open` from a button click (within the click's
3-second trigger), built from `bot.forms`; its `view_submission` read back. The action and where
the button was (channel, message, thread) travel in the view's private_metadata, so a form opened
before a restart is still understood when it is submitted after."""

from __future__ import annotations

import json
from typing import Any

from bot.actions import SLACK_LIMIT, decode_action, encode_action
from bot.commands import Action, CommandSpec
from bot.forms import form_fields

__all__ = ["CALLBACK_ID", "form_view", "read_submission"]

CALLBACK_ID = "clipbot_form"
_TITLE, _HINT, _OPTION = 24, 150, 75  # Slack's limits: modal title, placeholder, option text


def form_view(action: Action, spec: CommandSpec | None, *, channel: str, message: dict) -> dict:
    metadata = {"action": encode_action(action, limit=SLACK_LIMIT), "channel": channel,
                "ts": message.get("ts"), "thread_ts": message.get("thread_ts")}
    blocks = [_input(field) for field in form_fields(action, spec)]
    return {"type": "modal", "callback_id": CALLBACK_ID, "private_metadata": json.dumps(metadata),
            "title": {"type": "plain_text", "text": (action.label or "Change first")[:_TITLE]},
            "submit": {"type": "plain_text", "text": "Run"}, "close": {"type": "plain_text", "text": "Cancel"},
            "blocks": blocks}


def _input(field: Any) -> dict:
    if field.choices:
        options = [{"text": {"type": "plain_text", "text": str(c)[:_OPTION]}, "value": str(c)} for c in field.choices]
        element: dict = {"type": "static_select", "action_id": field.name, "options": options[:100]}
        chosen = next((o for o in options if o["value"] == field.value), None)
        if chosen is not None:
            element["initial_option"] = chosen
    else:
        element = {"type": "plain_text_input", "action_id": field.name, "multiline": field.long,
                   "placeholder": {"type": "plain_text", "text": field.hint[:_HINT]}}
        if field.value:
            element["initial_value"] = field.value
    return {"type": "input", "block_id": field.name, "optional": True, "element": element,
            "label": {"type": "plain_text", "text": field.label}}


def read_submission(view: dict) -> tuple[Action, dict[str, str], dict]:
    """(the action, the typed values by option, {"channel", "ts", "thread_ts"}) of a submitted
    form; ValueError if it is not one of ours."""
    try:
        metadata = json.loads(view.get("private_metadata") or "")
    except ValueError:
        raise ValueError("not a clipbot form") from None
    action = decode_action(str(metadata.get("action", "")))
    answers: dict[str, str] = {}
    for block_id, elements in ((view.get("state") or {}).get("values") or {}).items():
        for element in elements.values():
            if block_id not in action.ask:
                continue
            chosen = element.get("selected_option") or {}
            answers[block_id] = str(chosen.get("value") or element.get("value") or "")
    return action, answers, metadata
