"""Buttons as data: an `Action` travels inside the button as a short string.

The string holds the command and its options, never a server-side id, so a button keeps
working after the bot restarts (discord.py's dynamic items, Slack's button `value`). A click is
decoded back into an `Action` and dispatched as an ordinary request from the clicker.
"""

from __future__ import annotations

import json

from bot.commands import Action

PREFIX = "cb1:"
DISCORD_LIMIT = 100  # custom_id
SLACK_LIMIT = 2000  # button value


def encode_action(action: Action, *, limit: int = DISCORD_LIMIT) -> str:
    """`cb1:["command",{options}]`, or `cb1:["command",{options},["asked",...]]` for an action that
    asks first; ValueError if it does not fit in `limit` characters."""
    parts: list = [action.command, action.options] + ([list(action.ask)] if action.ask else [])
    body = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    text = PREFIX + body
    if len(text) > limit:
        raise ValueError(f"action /{action.command} encodes to {len(text)} characters; the limit is {limit}")
    return text


def decode_action(text: str, *, label: str = "") -> Action:
    """The `Action` a button string holds; ValueError for anything that is not one of ours."""
    if not text.startswith(PREFIX):
        raise ValueError("not a clipbot action")
    try:
        command, options, *rest = json.loads(text[len(PREFIX):])
    except (ValueError, TypeError):
        raise ValueError("malformed clipbot action") from None
    ask = rest[0] if rest else []
    if (not isinstance(command, str) or not isinstance(options, dict) or len(rest) > 1
            or not isinstance(ask, list) or not all(isinstance(a, str) for a in ask)):
        raise ValueError("malformed clipbot action")
    return Action(label=label or command, command=command, options=options, ask=tuple(ask))
