"""TEMPORARY stub of the interface in /work/coord/INTERFACES.md (main's version replaces it on merge)."""

from __future__ import annotations

from bot.adapters.local import _fill_positional, _split_options


def parse_command_text(spec, text: str) -> dict:
    positional, named = _split_options(text)
    options = dict(named)
    options.update(_fill_positional(spec, positional, named))
    return options
