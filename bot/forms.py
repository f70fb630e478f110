"""Forms for buttons that ask first (`Action.ask`): which fields, pre-filled how, read back how.

A Remix button asks for a new prompt (and mode) before its command runs. Discord shows a modal,
Slack a `views.open` modal; both build it from the `FormField`s here and hand what was typed to
`filled`, so the two platforms ask the same questions and read the answers the same way. The
action itself travels in the form's id (Discord's custom_id, Slack's private_metadata), so a form
sent before a restart still works when it is submitted after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.commands import Action, CommandSpec

__all__ = ["FormField", "filled", "form_fields"]


@dataclass(frozen=True)
class FormField:
    name: str  # the option it fills
    label: str
    value: str  # pre-filled: what the action would send
    hint: str  # placeholder text
    choices: tuple[str, ...] = ()
    long: bool = False  # a free-text option: a multi-line box


def form_fields(action: Action, spec: CommandSpec | None) -> list[FormField]:
    """One field per asked option, in order; an option the command does not have is skipped."""
    fields = []
    for name in action.ask:
        option = spec.option(name) if spec is not None else None
        if option is None:
            continue
        value = action.options.get(name, "")
        hint = f"one of: {', '.join(option.choices)}" if option.choices else (
            option.description or name) + ("" if name in action.options else " (empty: as before)")
        fields.append(FormField(name=name, label=name.replace("_", " ").capitalize(), value=str(value),
                                hint=hint, choices=option.choices, long=option.type is str and not option.choices))
    return fields


def filled(action: Action, answers: dict[str, Any]) -> dict[str, Any]:
    """The action's options with what the form's fields hold; an emptied field leaves its option out."""
    options: dict[str, Any] = dict(action.options)
    for name in action.ask:
        if name not in answers:
            continue
        value = str(answers[name] or "").strip()
        if value:
            options[name] = value
        else:
            options.pop(name, None)
    return options
