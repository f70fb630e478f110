"""clipbot-lines: a minimal chat adapter. It answers the commands in the file CLIPBOT_LINES_INBOX,
one a line (`/whatis photo.png labels: cat, dog`), printing each answer, then stops.

`clipbot run` serves it when CLIPBOT_LINES_INBOX is set (beside Discord and Slack when theirs are);
`clipbot run --adapter lines` asks for it alone. Everything it does goes through the adapter
contract (`bot.adapters.base`): its settings class, a surface that renders reply streams, the
shared file intake and error reply.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, AsyncIterator

from pydantic import Field

from bot.adapters.base import Adapter, AdapterSettings, ChatSurface, Intake, error_reply
from bot.commands import Attachment, Reply, Request
from bot.markup import render_plain
from bot.options import parse_command_text
from engine.errors import UserError

CHANNEL = "inbox"


class LinesSettings(AdapterSettings):
    """Read from CLIPBOT_LINES_INBOX and CLIPBOT_LINES_USER."""

    inbox: Path | None = Field(None, description="file of command lines to answer; set: `clipbot run` serves it")
    user: str = Field("lines-user", description="user id the commands come from")


class LinesSurface(ChatSurface):
    platform = "lines"

    def __init__(self, app: Any, settings: LinesSettings) -> None:
        self.app, self.settings = app, settings
        self.intake = Intake.of(app)

    async def answer(self, line: str) -> None:
        try:
            request = await asyncio.to_thread(self.request, line)  # files are read and stored now
        except UserError as exc:
            await self.deliver({}, _one(error_reply(exc)))
            return
        await self.deliver(request.conversation, self.app.handle(request))

    def request(self, line: str) -> Request:
        name, _, rest = line.strip().removeprefix("/").partition(" ")
        spec = self.app.spec(name)
        options = dict(parse_command_text(spec, rest))
        for key, value in list(options.items()):
            option = spec.option(key)
            if option is not None and option.type is Attachment:
                options[key] = self.intake.local_file(str(value))
        return Request(command=spec.name, options=options, user_id=self.settings.user, channel_id=CHANNEL,
                       platform=self.platform, space_id="lines", readable_channels=frozenset({CHANNEL}),
                       user_name=self.settings.user, conversation={"channel": CHANNEL})

    async def deliver(self, conversation: dict, replies: AsyncIterator[Reply]) -> None:
        async for reply in replies:
            text = render_plain(reply.text)
            if text and (reply.final or reply.progress is None):  # progress is not worth a line here
                print(("error: " if reply.error else "") + text, flush=True)


class Lines(Adapter):
    name = "lines"
    settings_class = LinesSettings

    def configured(self, settings: LinesSettings) -> bool:  # type: ignore[override]
        return settings.inbox is not None

    async def serve(self, app: Any, settings: LinesSettings, stop_event: asyncio.Event) -> None:  # type: ignore[override]
        surface = LinesSurface(app, settings)
        await surface.resume_followed_jobs()  # jobs a previous run left: answered here too
        await app.startup()
        for line in settings.inbox.read_text().splitlines():
            if stop_event.is_set():
                return
            if line.strip():
                await surface.answer(line)


async def _one(reply: Reply) -> AsyncIterator[Reply]:
    yield reply


adapter = Lines()
