"""Platform-neutral command model: what a command takes, what a user asked, what we answer.

Adapters turn platform events into a `Request` and render `Reply`s; plugins declare
`CommandSpec`s, usually with the `command` decorator, which reads a handler's signature:
the docstring's first paragraph is the description, type hints are option types and
`Annotated[T, "text"]` adds an option's description.
"""

from __future__ import annotations

import inspect
import re
import typing
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Union

from engine.errors import UserError

__all__ = [
    "Action",
    "Attachment",
    "CommandSpec",
    "Image",
    "Option",
    "Reply",
    "Request",
    "UserError",
    "command",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Attachment:
    """An uploaded file, already checked and stored in the blob store under `key`."""

    key: str
    filename: str
    content_type: str
    size: int
    source_id: str = ""  # the platform's id for the file (Discord attachment id, Slack file id)


@dataclass(frozen=True)
class Image:
    """Image bytes in a reply (a PNG chart, a generated picture)."""

    data: bytes
    filename: str = "image.png"
    description: str = ""
    spoiler: bool = False  # hidden until clicked where the platform can (Discord); already blurred


@dataclass(frozen=True)
class Option:
    """One named option of a command; `type` is str, int, float, bool or Attachment."""

    name: str
    type: type
    description: str = ""
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    multiple: bool = False  # a list of `type` (`files: list[Attachment] = ()`): the CLI takes several

    def convert(self, raw: Any) -> Any:
        """Turn a raw value (text from a terminal, JSON from a platform) into `type`; for a
        `multiple` option, a list (or one value) into a tuple of `type`."""
        if self.multiple:
            values = raw if isinstance(raw, (list, tuple)) else [raw]
            return tuple(self._convert_one(v) for v in values)
        return self._convert_one(raw)

    def _convert_one(self, raw: Any) -> Any:
        if self.type is Attachment:
            if not isinstance(raw, Attachment):
                raise UserError(f"option '{self.name}' needs an attached image")
            return raw
        if type(raw) is self.type and self.type is not str:  # already typed (JSON from a platform)
            value = raw
        else:
            text = str(raw).strip()
            try:
                if self.type is bool:
                    value = _parse_bool(text)
                elif self.type is int:
                    value = int(text)
                elif self.type is float:
                    value = float(text)
                else:
                    value = text
            except ValueError:
                kind = {int: "a whole number", float: "a number", bool: "yes or no"}.get(self.type, "text")
                raise UserError(f"option '{self.name}' must be {kind}, got '{text}'") from None
        if self.choices and value not in self.choices:
            raise UserError(f"option '{self.name}' must be one of: {', '.join(self.choices)} (got '{value}')")
        return value


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in {"1", "true", "yes", "on", "y"}:
        return True
    if lowered in {"0", "false", "no", "off", "n"}:
        return False
    raise ValueError(text)


# Friendly names for the message menus (Discord) and shortcuts (Slack) of the built-in commands;
# any other command a picture alone can run is offered as "/NAME this".
MESSAGE_ACTION_NAMES = {"whatis": "What is this?", "search": "Find similar pictures", "describe": "Describe"}


@dataclass(frozen=True)
class CommandSpec:
    """A slash command: its name, description, options and the async handler that serves it.

    The handler is called as `handler(ctx, **options)` and returns an async iterator of
    `Reply` (an async generator) or an awaitable of one `Reply`.
    """

    name: str
    description: str
    handler: Callable[..., Union[AsyncIterator["Reply"], Awaitable["Reply"]]]
    options: tuple[Option, ...] = ()
    admin_only: bool = False
    long_running: bool = False  # minutes, not seconds: adapters open a thread and leave the interaction token
    platforms: frozenset[str] | None = None  # the platforms that offer it (None: all); others never register it
    menus: bool = True  # False: never a message menu / shortcut, even where a picture alone could run it

    def offered_on(self, platform: str) -> bool:
        return self.platforms is None or platform in self.platforms

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid command name {self.name!r}: lowercase letters, digits, - and _ only")
        if not self.description:
            raise ValueError(f"command {self.name!r} needs a description (the handler's docstring)")

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def picture_option(self) -> str | None:
        """The option a message's picture fills when that picture alone can run the command (an image
        option, nothing else required): Discord's message menus and Slack's message shortcuts."""
        if not self.menus:
            return None
        pictures = [o for o in self.options if o.type is Attachment and not o.multiple]
        if pictures and all(o.type is Attachment for o in self.options if o.required):
            return pictures[0].name
        return None

    def message_action_name(self, limit: int) -> str:
        """What a message menu or shortcut running this command is called ("What is this?")."""
        return MESSAGE_ACTION_NAMES.get(self.name, f"/{self.name} this")[:limit]

    def usage(self) -> str:
        parts = [f"/{self.name}"]
        for o in self.options:
            parts.append(f"{o.name}: <{_type_word(o)}>" if o.required else f"[{o.name}: <{_type_word(o)}>]")
        return " ".join(parts)


def _type_word(option: Option) -> str:
    if option.choices:
        return "|".join(option.choices)
    return {Attachment: "image", int: "number", float: "number", bool: "yes|no"}.get(option.type, "text")


@dataclass(frozen=True)
class Request:
    """What a user asked, whatever the platform. `options` hold raw values until dispatch converts them.

    `space_id` is the Discord guild or Slack workspace. `readable_channels` are the channels of that
    space the requester may read: adapters always fill it; `None` means no restriction and is for the
    operator's CLI only. `private_scopes` are the private threads (Discord) whose pictures the
    requester may also see: the thread the request comes from, and the channels where they may see
    every private thread (Manage Threads). `conversation` is where answers go, opaque to everyone but the adapter that
    made it (long jobs store it, so a restarted bot can resume posting). `source_message`, for a
    button click, says which message the button is on, in the adapter's terms (what
    `ChatSurface.delete_message` takes); `delete_source`, set with it, deletes that message.
`upload_limit` is the platform's per-file upload limit where a handler must fit a file to it
(a timelapse): Discord's from the interaction, Slack's 1 GB; None for the local chat and the CLI.

    `open_conversation`, when set, opens the place a long job answers in (a thread, a parent
    message) and returns the completed `conversation`. Adapters open it lazily, at the first public
    reply, so a refusal before any work (a permission check, a bad option) is answered privately
    and leaves nothing in the channel; `bot.longjob.submit` awaits it before storing `conversation`.
    """

    command: str
    options: dict[str, Any] = field(default_factory=dict)
    user_id: str = ""
    channel_id: str = ""
    platform: str = "local"
    is_admin: bool = False
    thread_id: str | None = None
    space_id: str = ""
    readable_channels: frozenset[str] | None = None
    user_name: str = ""
    conversation: dict[str, Any] | None = None
    open_conversation: Callable[[], Awaitable[dict[str, Any]]] | None = field(default=None, compare=False,
                                                                              repr=False)
    private_scopes: frozenset[str] = frozenset()
    channel_nsfw: bool = False  # an age-restricted channel (Discord's nsfw flag): safety allows there
    source_message: dict[str, Any] | None = None  # a click: the message the button is on (adapter's own shape)
    delete_source: Callable[[], Awaitable[None]] | None = field(default=None, compare=False, repr=False)
    upload_limit: int | None = None  # the most bytes one file in a reply may have here (None: any size)

    def may_read(self, channel_id: str) -> bool:
        return self.readable_channels is None or channel_id in self.readable_channels


ActionValue = Union[str, int, float, bool]


@dataclass(frozen=True)
class Action:
    """A button on a reply: a pre-filled command. A click dispatches `Request(command, options)`
    from the person who clicked, with the usual permission checks, so it works after a restart.

    `ask` names options the clicker fills in first (Discord and Slack open a form, pre-filled with
    the action's values; the local chat prints the command for the user to edit): a "Remix" that
    changes the prompt before it runs."""

    label: str
    command: str
    options: dict[str, ActionValue] = field(default_factory=dict)
    style: str = "secondary"  # primary | secondary | danger
    ask: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.style not in ("primary", "secondary", "danger"):
            raise ValueError(f"unknown action style {self.style!r}")
        for key, value in self.options.items():
            if not isinstance(value, (str, int, float, bool)):
                raise ValueError(f"action option {key!r} must be text, a number or yes/no")


@dataclass(frozen=True)
class Reply:
    """One message of an answer. A stream of replies ends with one whose `final` is true.

    A stream addresses one message: each reply with `progress` (0..1) set replaces the previous
    progress message, and the final reply replaces the progress message (or is posted if there was
    none). `text` is neutral markup (`bot.markup`). `data` is the JSON-able result that
    `clipbot <command> --json` prints; `actions` are buttons. `ephemeral` replies are shown only
    to the requester where the platform can.
    """

    text: str = ""
    images: tuple[Image, ...] = ()
    progress: float | None = None
    final: bool = False
    ephemeral: bool = False
    error: bool = False
    data: dict[str, Any] | None = None
    actions: tuple[Action, ...] = ()

    @property
    def public(self) -> bool:
        """Shown to the channel (not private, not an error, not empty): what opens a long job's
        thread or parent message, so a refusal before any work stays private."""
        return not (self.ephemeral or self.error) and bool(self.text or self.images or self.actions
                                                           or self.progress is not None)


def command(
    func: Callable | None = None, *, name: str | None = None, admin_only: bool = False,
    long_running: bool = False, platforms: Iterable[str] | None = None, menus: bool = True,
) -> Any:
    """Build a `CommandSpec` from an async handler `async def name(ctx, opt: T = default, ...)`."""

    def build(fn: Callable) -> CommandSpec:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = list(inspect.signature(fn).parameters.values())[1:]  # first is ctx
        options = []
        for p in params:
            hint = hints.get(p.name, str)
            desc = ""
            choices: tuple[str, ...] = ()
            if typing.get_origin(hint) is typing.Annotated:
                hint, *meta = typing.get_args(hint)
                for m in meta:
                    if isinstance(m, str):
                        desc = m
                    elif isinstance(m, tuple):
                        choices = m
            if typing.get_origin(hint) is typing.Literal:
                choices = tuple(typing.get_args(hint))
                hint = str
            multiple = typing.get_origin(hint) in (list, tuple)
            if multiple:
                hint = typing.get_args(hint)[0]
            required = p.default is inspect.Parameter.empty
            options.append(
                Option(
                    name=p.name,
                    type=hint,
                    description=desc,
                    required=required,
                    default=None if required else (tuple(p.default) if multiple else p.default),
                    choices=choices,
                    multiple=multiple,
                )
            )
        doc = inspect.getdoc(fn) or ""
        description = doc.split("\n\n", 1)[0].replace("\n", " ").strip()
        return CommandSpec(
            name=name or fn.__name__.rstrip("_"),
            description=description,
            handler=fn,
            options=tuple(options),
            admin_only=admin_only,
            long_running=long_running,
            platforms=frozenset(platforms) if platforms is not None else None,
            menus=menus,
        )

    return build(func) if func is not None else build
