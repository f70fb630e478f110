"""Local chat in a terminal: the embedded default, and the test backend for plugins.

It goes through the same dispatch path as Discord and Slack. Syntax mirrors Discord's:
`/whatis photo.jpg labels: cat, dog, person top: 3` (parsed by `bot.options`, as Slack's slash
commands are); a file path fills an image option. Replies print as they arrive; images in
replies are saved under the output folder and their paths printed; buttons print as the
commands they stand for, which the user can type.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bot.app import App
from bot.commands import Action, Attachment, Reply, Request
from bot.intake import ImageLimits, file_attachment
from bot.markup import render_plain
from bot.options import parse_command_text
from engine.datadir import make_dir, write_file
from engine.errors import BackendUnavailable, UserError

PROMPT = "clipbot> "


class LocalAdapter:
    platform = "local"

    def __init__(self, dispatcher: App, *, out: TextIO = sys.stdout, output_dir: Path | None = None,
                 user_id: str = "local-user", channel_id: str = "local", is_admin: bool = True) -> None:
        self.dispatcher = dispatcher
        self.out = out
        self.output_dir = Path(output_dir or dispatcher.settings.data_dir / "output")
        self.user_id, self.channel_id, self.is_admin = user_id, channel_id, is_admin
        self._saved = 0
        self._progress_actions: tuple = ()  # buttons already shown for the current progress message
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
        return Request(command=command, options=options, user_id=self.user_id, channel_id=self.channel_id,
                       platform=self.platform, is_admin=self.is_admin, space_id="local",
                       readable_channels=frozenset({self.channel_id}), user_name=self.user_id,
                       conversation={"channel": self.channel_id})

    def _attach(self, path_text: str) -> Attachment:
        return file_attachment(self.dispatcher.engine.blobs, path_text, limits=ImageLimits.of(self.dispatcher.settings))

    # ---- answering -------------------------------------------------------------------------
    async def handle_line(self, line: str) -> list[Reply]:
        """Dispatch one line and print each reply as it arrives; returns them (tests read them)."""
        try:
            request = await asyncio.to_thread(self.parse, line)
        except UserError as exc:
            reply = Reply(text=str(exc), error=True, final=True, ephemeral=True)
            self.render(reply)
            return [reply]
        replies = []
        async for reply in self.dispatcher.handle(request):
            replies.append(reply)
            await asyncio.to_thread(self.render, reply)
        return replies

    def render(self, reply: Reply) -> None:
        text = render_plain(reply.text)
        if reply.progress is not None and not reply.final:
            self.out.write(f"[{reply.progress:4.0%}] {text}\n")
        elif text:
            self.out.write(("error: " if reply.error else "") + text + "\n")
        for image in reply.images:
            self.out.write(f"[image saved: {self.save_image(image.data, image.filename)}]\n")
        # A progress message is edited in place on chat platforms: print its buttons once, not per edit.
        repeated = reply.progress is not None and not reply.final and reply.actions == self._progress_actions
        self._progress_actions = reply.actions if reply.progress is not None and not reply.final else ()
        for action in () if repeated else reply.actions:
            self.out.write(f"[{action.label}] {action_command(action)}\n")
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
            tasks.append(asyncio.create_task(self._render_stream(replies)))
        if tasks:
            self.out.write(f"(following {len(tasks)} unfinished job{'s' if len(tasks) > 1 else ''} "
                           "from last time)\n")
            self.out.flush()
        return tasks

    async def _render_stream(self, replies: Any) -> None:
        async for reply in replies:
            await asyncio.to_thread(self.render, reply)

    async def repl(self, stdin: TextIO = sys.stdin) -> None:
        """Read commands until EOF or /quit. At EOF (piped input) resumed jobs are waited for; /quit
        leaves them running on the workers, to be followed again next time."""
        interactive = stdin.isatty()
        self.out.write("clipbot local chat. /help lists commands, /quit leaves.\n")
        resumed = await self.resume()
        quit_asked = await self._read_loop(stdin, interactive)
        if self.reconnecting is not None:  # Redis was down at start
            if self.reconnecting.done() and not self.reconnecting.cancelled() and not self.reconnecting.exception():
                resumed += self.reconnecting.result()  # it came back: the jobs found then
            else:
                self.reconnecting.cancel()  # still down: no job known to wait for
        for task in resumed:
            if quit_asked:
                task.cancel()
        await asyncio.gather(*resumed, return_exceptions=True)

    async def _read_loop(self, stdin: TextIO, interactive: bool) -> bool:
        """True when the user typed /quit, False at EOF."""
        while True:
            if interactive:
                self.out.write(PROMPT)
                self.out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line:
                return False
            if line.strip() in ("/quit", "/exit"):
                return True
            if line.strip():
                await self.handle_line(line)


def action_command(action: Action) -> str:
    """The line a user types to do what a button does: `/imagine prompt: a fox seed: 7`."""
    parts = [f"/{action.command}"]
    for name, value in action.options.items():
        text = ("yes" if value else "no") if isinstance(value, bool) else str(value)
        parts.append(f"{name}: {text}")
    return " ".join(parts)
