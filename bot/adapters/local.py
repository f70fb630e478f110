"""Local chat in a terminal: the embedded default, and the test backend for plugins.

It goes through the same dispatch path as Discord and Slack. Syntax mirrors Discord's:
`/whatis photo.jpg labels: cat, dog, person top: 3`. Words before the first `name:` fill
the command's options in order (quotes group words); a file path fills an image option.
Images in replies are saved under the output folder and their paths printed.
"""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from bot.commands import Attachment, CommandSpec, Reply, Request
from bot.dispatch import Dispatcher
from engine.errors import UserError
from engine.images import read_image_file

_OPTION = re.compile(r"(?:(?<=\s)|^)([a-z][a-z0-9_-]*):(?=\s|$)")
PROMPT = "clipbot> "


class LocalAdapter:
    platform = "local"

    def __init__(self, dispatcher: Dispatcher, *, out: TextIO = sys.stdout, output_dir: Path | None = None,
                 user_id: str = "local-user", channel_id: str = "local", is_admin: bool = True) -> None:
        self.dispatcher = dispatcher
        self.out = out
        self.output_dir = Path(output_dir or dispatcher.settings.data_dir / "output")
        self.user_id, self.channel_id, self.is_admin = user_id, channel_id, is_admin
        self._saved = 0

    # ---- parsing ---------------------------------------------------------------------------
    def parse(self, line: str) -> Request:
        """Turn one typed line into a Request; attachments are checked and stored now."""
        line = line.strip()
        if not line.startswith("/"):
            raise UserError("Commands start with / (try /help).")
        name, _, rest = line[1:].partition(" ")
        spec = self.dispatcher.spec(name.lower())
        positional, named = _split_options(rest)
        options = dict(named)
        options.update(_fill_positional(spec, positional, named))
        for key, value in list(options.items()):
            option = spec.option(key)
            if option is not None and option.type is Attachment:
                options[key] = self._attach(str(value))
        return Request(command=spec.name, options=options, user_id=self.user_id, channel_id=self.channel_id,
                       platform=self.platform, is_admin=self.is_admin)

    def _attach(self, path_text: str) -> Attachment:
        settings = self.dispatcher.settings
        data, info = read_image_file(path_text, max_bytes=settings.max_image_bytes,
                                     max_pixels=settings.max_image_pixels)
        key = self.dispatcher.engine.blobs.put(data)
        return Attachment(key=key, filename=Path(path_text).name, content_type=info.content_type, size=len(data))

    # ---- answering -------------------------------------------------------------------------
    async def handle_line(self, line: str) -> list[Reply]:
        """Dispatch one line and print the replies; returns them (tests read them)."""
        try:
            request = self.parse(line)
        except UserError as exc:
            replies = [Reply(text=str(exc), error=True, final=True, ephemeral=True)]
            self.render(replies[0])
            return replies
        replies = []
        async for reply in self.dispatcher.handle(request):
            self.render(reply)  # as it comes: progress lines show while the job runs
            replies.append(reply)
        return replies

    def render(self, reply: Reply) -> None:
        if reply.progress is not None:
            self.out.write(f"[{reply.progress:4.0%}] {reply.text}\n")
        elif reply.text:
            self.out.write(("error: " if reply.error else "") + reply.text + "\n")
        for image in reply.images:
            self.out.write(f"[image saved: {self.save_image(image.data, image.filename)}]\n")
        self.out.flush()

    def save_image(self, data: bytes, filename: str) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._saved += 1
        path = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{self._saved:03d}-{Path(filename).name}"
        path.write_bytes(data)
        return path

    async def repl(self, stdin: TextIO = sys.stdin) -> None:
        """Read commands until EOF or /quit."""
        interactive = stdin.isatty()
        self.out.write("clipbot local chat. /help lists commands, /quit leaves.\n")
        while True:
            if interactive:
                self.out.write(PROMPT)
                self.out.flush()
            line = await asyncio.to_thread(stdin.readline)
            if not line or line.strip() in ("/quit", "/exit"):
                return
            if line.strip():
                await self.handle_line(line)


def _split_options(rest: str) -> tuple[str, list[tuple[str, str]]]:
    """'a b labels: x, y top: 3' -> ('a b', [('labels', 'x, y'), ('top', '3')])."""
    marks = list(_OPTION.finditer(rest))
    positional = rest[: marks[0].start()] if marks else rest
    named = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(rest)
        named.append((mark.group(1), rest[mark.end():end].strip()))
    return positional.strip(), named


def _fill_positional(spec: CommandSpec, text: str, named: list[tuple[str, str]]) -> dict[str, Any]:
    """Give leading words to the options not named, in order: one word each, except that the
    first free-text option takes all the words left ('/whatis a.png cat, dog')."""
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
            values[option.name], words = " ".join(words), []
        else:
            values[option.name] = words.pop(0)
    if words:
        raise UserError(f"I don't know what to do with '{' '.join(words)}'. Usage: {spec.usage()}")
    return values
