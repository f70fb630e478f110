"""Reading a command's options from typed text, the same way on every platform.

`/whatis photo.jpg labels: cat, dog top: 3` in the local chat and `/whatis labels: cat, dog` in a
Slack slash command (which carries only text) both go through `parse_command_text`. Words before
the first `name:` fill the options not named, in order (quotes group words); the first free-text
option takes all the words left, so `/whatis a.png cat, dog` works. When it is the first option
filled it takes the text as typed, quotes included, for commands that read quotes themselves
(`/search -"red car" text:"exact words"`).
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from bot.commands import CommandSpec
from engine.errors import UserError

_OPTION = re.compile(r"(?:(?<=\s)|^)([a-z][a-z0-9_-]*):(?=\s|$)")


def parse_command_text(spec: CommandSpec, text: str) -> dict[str, str]:
    """Raw option values (text) from what follows the command name. Values are converted and
    checked later by dispatch; attachment options hold the text the user typed (a path, a name)."""
    positional, named = split_options(text)
    options = dict(named)
    options.update(_fill_positional(spec, positional, named))
    return options


def split_options(rest: str) -> tuple[str, list[tuple[str, str]]]:
    """'a b labels: x, y top: 3' -> ('a b', [('labels', 'x, y'), ('top', '3')])."""
    marks = list(_OPTION.finditer(rest))
    positional = rest[: marks[0].start()] if marks else rest
    named = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(rest)
        named.append((mark.group(1), rest[mark.end():end].strip()))
    return positional.strip(), named


def _fill_positional(spec: CommandSpec, text: str, named: list[tuple[str, str]]) -> dict[str, Any]:
    if not text:
        return {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UserError(f"Couldn't read that: {exc} (check your quotes).") from None
    given = {name for name, _ in named}
    values: dict[str, Any] = {}
    for option in (o for o in spec.options if o.name not in given):
        if not words:
            break
        if option.type is str and not option.choices:
            values[option.name], words = (" ".join(words) if values else text.strip()), []
        else:
            values[option.name] = words.pop(0)
    if words:
        raise UserError(f"I don't know what to do with '{' '.join(words)}'. Usage: {spec.usage()}")
    return values
