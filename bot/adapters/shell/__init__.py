"""The shell surface: `clipbot NAME ...`, one verb per chat command, generated from its `CommandSpec`.

A verb goes through dispatch like a message from any platform: `clipbot whatis photo.jpg
--labels "cat, dog" --json` is the `/whatis` handler's answer, its structured `data` printed as
JSON. Every plugin, third-party ones included, gets its verb this way. `bot.cli` holds the
process commands (run, worker, models, plugins) and hands every other verb to this module.

Replies render for a terminal: progress on stderr, text on stdout, images written to files,
buttons printed as the chat line they stand for. A refused request is one line on stderr and
exit code 2 (1 for an internal error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.adapters.base import Intake
from bot.adapters.registry import load_adapter, load_adapter_settings, reads_history
from engine.datadir import make_dir, write_file
from engine.wire import JSON

if TYPE_CHECKING:
    from bot.app import App
    from bot.commands import Attachment, CommandSpec, Image, Option, Request
    from bot.config import Settings
    from bot.events import HistorySource, ImagePosted

__all__ = ["EXIT_USER_ERROR", "GENERIC_FLAGS", "add_verb", "answer_verb", "with_paths"]

EXIT_USER_ERROR = 2
GENERIC_FLAGS = ("json", "out", "space", "channel", "user", "platform")


def add_verb(sub: "argparse._SubParsersAction[argparse.ArgumentParser]", spec: "CommandSpec") -> None:
    """`clipbot NAME` from a CommandSpec: the first required option is positional (or, when none is
    required, the first free-text option: `clipbot search QUERY`, unless files are the trailing
    positionals: `clipbot blend A.png B.png`), and also a flag; the rest are flags. Values stay
    text for dispatch to convert, except numbers (argparse checks them)."""
    from bot.commands import Attachment

    verb = sub.add_parser(spec.name, help=spec.description, description=spec.description)
    trailing = any(o.multiple and o.type is Attachment for o in spec.options)
    positional = next((o for o in spec.options if o.required), None) or (None if trailing else next(
        (o for o in spec.options if o.type is str and not o.choices and not o.multiple
         and o.name not in GENERIC_FLAGS), None))
    for option in spec.options:
        if option.name in GENERIC_FLAGS:
            continue  # the generic flag of the same name wins; the option stays reachable by chat
        if option.multiple:
            _add_multiple(verb, option)
            continue
        kwargs: dict[str, object] = {"help": option.description or None}
        if option.choices:
            kwargs["choices"] = list(option.choices)
        if option.type in (int, float):
            kwargs["type"] = option.type
        if option.type is Attachment:
            kwargs["metavar"] = "PATH"
        if option.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        flag = f"--{option.name.replace('_', '-')}"
        if option is positional:
            # Positional, or the flag of the same name: `clipbot hello Ada` = `clipbot hello --name Ada`.
            # Dispatch says what is missing, as it does for chat.
            plain = {k: v for k, v in kwargs.items() if k != "action"}
            verb.add_argument(f"opt_{option.name}", nargs="?", default=argparse.SUPPRESS,
                              **{**plain, "metavar": option.name.upper()})
            verb.add_argument(flag, dest=f"opt_{option.name}", default=argparse.SUPPRESS, **plain)
        else:
            verb.add_argument(flag, dest=f"opt_{option.name}", **kwargs)
    verb.add_argument("--json", action="store_true", help="print the answer's structured data as JSON")
    verb.add_argument("--out", type=Path, help="folder for the images in the answer (default: DATA_DIR/output)")
    verb.add_argument("--space", default="local", help="space (Discord guild, Slack team) the request is in")
    verb.add_argument("--channel", action="append", default=[],
                      help="channel of the request (repeat: every one given is readable; none: no restriction)")
    verb.add_argument("--user", default="cli", help="user id the request comes from")
    verb.add_argument("--platform", default="local", help="platform whose data the request addresses")
    verb.set_defaults(spec_name=spec.name)


def _add_multiple(verb: argparse.ArgumentParser, option: "Option") -> None:
    """A list option: files are trailing positionals (`clipbot index add ... a.png b.png`),
    anything else a repeatable flag."""
    from bot.commands import Attachment

    if option.type is Attachment:
        verb.add_argument(f"opt_{option.name}", nargs="*", metavar=option.name.upper(),
                          help=option.description or None)
        verb.set_defaults(trailing_files=f"opt_{option.name}")
    else:
        verb.add_argument(f"--{option.name.replace('_', '-')}", dest=f"opt_{option.name}", action="append",
                          help=option.description or None)


def answer_verb(args: argparse.Namespace, settings: "Settings") -> int:
    """Run the verb `args` were parsed for: one request, its replies printed; the exit code."""
    from bot.app import open_app

    with open_app(settings) as app:
        request = _request(app, app.spec(args.spec_name), args)
        return asyncio.run(_answer_with_history(app, request, args, settings))


async def _answer_with_history(app: "App", request: "Request", args: argparse.Namespace,
                               settings: "Settings") -> int:
    """`_answer`, with the platform's message history reachable over its Web API when a command
    (`clipbot index backfill --platform discord ...`) walks it; nothing connects unless one does."""
    async with contextlib.AsyncExitStack() as stack:
        if reads_history(args.platform):
            app.history_sources[args.platform] = _ShellHistory(stack, args.platform, app)
        return await _answer(app, request, args)


class _ShellHistory:
    """A platform's `HistorySource` from the shell: logs in (REST only) on first use, closes at exit."""

    def __init__(self, stack: contextlib.AsyncExitStack, platform: str, app: "App") -> None:
        self._stack, self._platform, self._app = stack, platform, app
        self._source: "HistorySource | None" = None

    async def history(self, space_id: str, channel_id: str, cursor: str | None, limit: int) -> "tuple[list[ImagePosted], str | None]":
        if self._source is None:
            adapter = load_adapter(self._platform)
            adapter.check_installed()
            settings = load_adapter_settings(adapter)
            self._source = await self._stack.enter_async_context(adapter.open_history(self._app, settings))
        return await self._source.history(space_id, channel_id, cursor, limit)


def _request(app: "App", spec: "CommandSpec", args: argparse.Namespace) -> "Request":
    from bot.commands import Attachment, Request

    options: dict[str, object] = {}
    for option in spec.options:
        value = getattr(args, f"opt_{option.name}", None)
        if value is None:
            continue
        if option.type is Attachment:
            value = [_attach(app, v) for v in value] if option.multiple else _attach(app, value)
        options[option.name] = value
    channels = list(dict.fromkeys(args.channel))
    return Request(
        command=spec.name, options=options, user_id=args.user, user_name=args.user,
        channel_id=channels[0] if channels else "cli", platform=args.platform, is_admin=True,
        space_id=args.space, readable_channels=frozenset(channels) if channels else None,
        private_scopes=frozenset(channels),  # the operator: every private thread of those channels too
    )


def _attach(app: "App", path: str) -> "Attachment":
    return Intake.of(app).local_file(path)


async def _answer(app: "App", request: "Request", args: argparse.Namespace) -> int:
    """Stream the replies: progress to stderr, text (or the final data as JSON) to stdout."""
    from bot.markup import progress_line, render_plain

    out_dir = Path(args.out) if args.out else Path(app.settings.data_dir) / "output"
    written: dict[str, str] = {}
    final = None
    async for reply in app.handle(request):
        for image in reply.images:
            written[image.filename] = str(_write_image(out_dir, image))
        if reply.final:
            final = reply
        text = render_plain(reply.text)
        if reply.error:
            print(f"clipbot: {' '.join(text.split())}", file=sys.stderr)
            return 1 if (reply.data or {}).get("error") == "internal" else EXIT_USER_ERROR
        if reply.progress is not None and not reply.final:
            print(progress_line(reply.progress, text), file=sys.stderr, flush=True)
        elif not args.json:
            if text:
                print(text)
            for image in reply.images:
                print(f"[image saved: {written[image.filename]}]")
            for action in reply.actions:
                from bot.adapters.local import action_command  # the line a chat user types

                print(f"[{action.label}] {action_command(action)}")
    if args.json:
        print(json.dumps(with_paths((final.data if final else None) or {}, written)))
    return 0


def _write_image(out_dir: Path, image: "Image") -> Path:
    make_dir(out_dir)
    return write_file(out_dir / Path(image.filename).name, image.data)


def with_paths(value: JSON, written: dict[str, str]) -> JSON:
    """The data with every string that names an image written here replaced by its path."""
    if isinstance(value, str):
        return written.get(value, value)
    if isinstance(value, list):
        return [with_paths(v, written) for v in value]
    if isinstance(value, dict):
        return {k: with_paths(v, written) for k, v in value.items()}
    return value
