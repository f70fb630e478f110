"""TEMPORARY stub of the interface in /work/coord/INTERFACES.md (main's version replaces it on merge)."""

from __future__ import annotations

import json

from bot.commands import Action

PREFIX = "cb1:"


def encode_action(action: Action) -> str:
    text = PREFIX + json.dumps([action.command, action.options, action.label, action.style], separators=(",", ":"))
    if len(text) > 100:
        raise ValueError("action too long")
    return text


def decode_action(text: str) -> Action:
    if not text.startswith(PREFIX):
        raise ValueError("not an action")
    command, options, label, style = json.loads(text[len(PREFIX):])
    return Action(label=label, command=command, options=options, style=style)
