"""Local chat in a terminal: the embedded default, and the test backend for plugins.

It goes through the same dispatch path as Discord and Slack. Syntax mirrors Discord's:
`/whatis photo.jpg labels: cat, dog, person top: 3` (parsed by `bot.options`, as Slack's slash
commands are); a file path fills an image option. Replies print as they arrive; images in
replies are saved under the output folder and their paths printed; buttons print as the
commands they stand for, which the user can type. How lines are read, how commands run side
by side and what Ctrl-C does is `session`'s part; the terminal itself is `terminal`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, TextIO

from bot.adapters.base import Intake
from bot.app import App
from bot.commands import Action, Attachment, Reply, Request
from bot.markup import progress_line, render_plain
from bot.options import parse_command_text
from engine.datadir import make_dir, write_file
from engine.errors import BackendUnavailable, UserError

__all__ = ["LocalAdapter", "action_command", "progress_line"]


@dataclass(eq=False)
class _Stream:
    """One command's replies as they print. A progress message is edited in place on chat
    platforms, so its buttons print once, not per edit; the long jobs it follows (their Cancel
    buttons say which) are what Ctrl-C cancels."""

    progress_actions: tuple = ()  # buttons already shown for its current progress message
    jobs: set[str] = field(default_factory=set)

    def note(self, reply: Reply) -> None:
        self.jobs.update(str(a.options["job"]) for a in reply.actions if a.command == "cancel" and a.options.get("job"))


class LocalAdapter:
    platform = "local"

    def __init__(self, dispatcher: App, *, out: TextIO = sys.stdout, output_dir: Path | None = None,
                 user_id: str = "local-user", channel_id: str = "local", is_admin: bool = True) -> None:
        self.dispatcher = dispatcher
        self.out = out
        self.output_dir = Path(output_dir or dispatcher.settings.data_dir / "output")
        self.user_id, self.channel_id, self.is_admin = user_id, channel_id, is_admin
        self._saved = 0
        self._printing = threading.Lock()  # one reply's lines at a time, whichever thread renders it
        self._stream = _Stream()  # for render() called outside a command's stream
        self.running: dict[asyncio.Task, _Stream] = {}  # the commands answering now
        self.lines: Any = None  # while the chat runs: where lines come from (terminal.open_lines)
        self.reconnecting: asyncio.Task | None = None  # resuming jobs once Redis is back (down at start)

    # ---- parsing ---------------------------------------------------------------------------
    def parse(self, line: str) -> Request:
        """Turn one typed line into a Request; attachments are checked and stored now (blocking:
        call it off the event loop)."""
        line = line.strip()
        if not line.startswith("/"):
            raise UserError("Commands start with / (try /help).")
        name, _, rest = line[1:].partition(" ")
        spec = self.dispatcher.spec(name.lower())
        options: dict[str, Any] = dict(parse_command_text(spec, rest))
        for key, value in list(options.items()):
            option = spec.option(key)
            if option is not None and option.type is Attachment:
                paths = shlex.split(str(value)) if option.multiple else [str(value)]
                attached = [self._attach(p) for p in paths]
                options[key] = attached if option.multiple else attached[0]
        return self.request(spec.name, options)

    def request(self, command: str, options: dict[str, Any]) -> Request:
        """A request from the local user in the local channel."""
        # A typed line is what a button stands for here, so each one may delete "its" message.
        return Request(command=command, options=options, user_id=self.user_id, channel_id=self.channel_id,
                       platform=self.platform, is_admin=self.is_admin, space_id="local",
                       readable_channels=frozenset({self.channel_id}), user_name=self.user_id,
                       conversation={"channel": self.channel_id}, source_message={"channel": self.channel_id},
                       delete_source=self._deleted)

    async def _deleted(self) -> None:
        """The local chat's `delete_message`: printed lines cannot be taken back, so it says so."""
        await asyncio.to_thread(self.print_line, "[deleted: that answer is gone from the chat]")

    def _attach(self, path_text: str) -> Attachment:
        return Intake.of(self.dispatcher).local_file(path_text)

    # ---- answering -------------------------------------------------------------------------
    async def handle_line(self, line: str) -> list[Reply]:
        """Dispatch one line and print each reply as it arrives; returns them (tests read them)."""
        try:
            request = await asyncio.to_thread(self.parse, line)
        except UserError as exc:
            reply = Reply(text=str(exc), error=True, final=True, ephemeral=True)
            self.render(reply)
            return [reply]
        return await self.answer(self.dispatcher.handle(request))

    async def answer(self, replies: AsyncIterator[Reply]) -> list[Reply]:
        """Print each reply of a stream as it arrives; returns them. While it runs, the command
        is in `running` (with the jobs it follows), where Ctrl-C finds it."""
        stream = _Stream()
        task = asyncio.current_task()
        self.running[task] = stream
        answered: list[Reply] = []
        try:
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    answered.append(reply)
                    stream.note(reply)
                    await asyncio.to_thread(self.render, reply, stream)
        finally:
            self.running.pop(task, None)
            if self.lines is not None:
                self.lines.end_progress(stream)
        return answered

    def render(self, reply: Reply, stream: _Stream | None = None) -> None:
        """Print a reply (blocking: it saves the reply's images). On a terminal a progress reply
        updates its command's progress line above the prompt instead of printing a line."""
        stream = stream or self._stream
        text = render_plain(reply.text)
        is_progress = reply.progress is not None and not reply.final
        with self._printing:  # commands answer side by side: one reply's lines, and file names, at a time
            lines = [] if is_progress or not text else [("error: " if reply.error else "") + text]
            lines += [f"[image saved: {self.save_image(i.data, i.filename)}]" + (" (blurred)" if i.spoiler else "")
                      for i in reply.images]
            repeated = is_progress and reply.actions == stream.progress_actions
            stream.progress_actions = reply.actions if is_progress else ()
            lines += [f"[{_button_label(a)}] {action_command(a)}" for a in (() if repeated else reply.actions)]
            if is_progress:
                line = progress_line(reply.progress, text)
                if self.lines is None or not self.lines.show_progress(stream, line):
                    lines.insert(0, line)
            elif self.lines is not None:
                self.lines.end_progress(stream)
            self._write(lines)

    def print_line(self, text: str) -> None:
        """A line of the chat's own (not a reply): the banner, what Ctrl-C did."""
        with self._printing:
            self._write([text])

    def _write(self, lines: list[str]) -> None:
        if lines:
            self.out.write("".join(f"{line}\n" for line in lines))
            self.out.flush()

    def save_image(self, data: bytes, filename: str) -> Path:
        make_dir(self.output_dir)
        self._saved += 1
        return write_file(self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._saved:03d}-{Path(filename).name}",
                          data)

    async def resume(self) -> list[asyncio.Task]:
        """Pick up the long jobs that were running when the chat last stopped; their progress and
        results print as they come. Returns the tasks rendering them.

        With the engine unreachable (Redis down) the chat starts all the same: it says so once,
        commands answer that line until Redis is back, and `self.reconnecting` keeps trying to
        pick the jobs up (as workers do), following them once it can."""
        try:
            return await self._resume(self.dispatcher.resume_jobs(self.platform))
        except BackendUnavailable as exc:
            self.render(Reply(text=str(exc), error=True, final=True))
            self.reconnecting = asyncio.create_task(
                self._resume(self.dispatcher.resume_jobs(self.platform, unreachable=lambda _said_once: None)))
            return []

    async def _resume(self, jobs: Any) -> list[asyncio.Task]:
        tasks = []
        async for _conversation, replies in jobs:
            tasks.append(asyncio.create_task(self.answer(replies)))
        if tasks:
            self.print_line(f"(following {len(tasks)} unfinished job{'s' if len(tasks) > 1 else ''} from last time)")
        return tasks

    async def repl(self, stdin: TextIO = sys.stdin) -> None:
        """Talk with the person at `stdin` until EOF, /quit or a second Ctrl-C (`ChatSession`)."""
        from bot.adapters.local.session import ChatSession

        await ChatSession(self).run(stdin)


def _button_label(action: Action) -> str:
    """A button that asks first (a Remix) says what to add or change in its line."""
    return f"{action.label}: set {', '.join(action.ask)}" if action.ask else action.label


def action_command(action: Action) -> str:
    """The line a user types to do what a button does: `/imagine prompt: a fox seed: 7`."""
    parts = [f"/{action.command}"]
    for name, value in action.options.items():
        text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
        parts.append(f"{name}: {text}")
    return " ".join(parts)
