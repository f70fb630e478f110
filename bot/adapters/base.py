"""The adapter contract: what a chat surface is to clipbot, and the pieces every surface shares.

An adapter has two faces:

- `Adapter`, the registered one (entry-point group `clipbot.adapters`, built-ins exactly like a
  third-party package): its name, its settings class, whether those settings configure it, and
  `serve`, which runs it until told to stop. It must import without its platform's SDK, so that
  `clipbot run` can say what to install instead of failing at import.
- the running surface `serve` builds (`ChatSurface`): it turns platform events into `Request`s for
  `app.handle`, renders the `Reply` stream back (`deliver`), follows the long jobs a restarted bot
  left running (`resume_followed_jobs`) and says which channels a user may read
  (`Request.readable_channels`).

Shared here, so no adapter rewrites them: file intake (`Intake`: download, check, store),
the one-line error reply (`error_reply`), and job resumption.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, ClassVar

from pydantic_settings import SettingsConfigDict

from bot.commands import Attachment, Reply
from bot.config import PluginSettings
from bot.intake import Downloader, ImageLimits, download_attachment, file_attachment
from engine.errors import UserError

if TYPE_CHECKING:
    from bot.app import App
    from bot.events import HistorySource
    from engine.blobs import BlobStore
    from engine.settings import EngineSettings

Deliver = Callable[[dict, AsyncIterator[Reply]], Awaitable[None]]  # (conversation, replies): render them there
Spawn = Callable[[Awaitable[None]], object]  # starts a delivery in the background (asyncio.ensure_future)

__all__ = ["Adapter", "AdapterSettings", "ChatSurface", "Intake", "count_api_answer", "error_reply", "missing_sdk",
           "resume_followed_jobs"]

log = logging.getLogger(__name__)


class AdapterSettings(PluginSettings):
    """Base of an adapter's settings: pydantic fields with a `description` each, read from
    `CLIPBOT_<ADAPTER>_<FIELD>` (or a field's own `validation_alias`, e.g. DISCORD_TOKEN) and .env.
    In code a field is also given by its name (`SlackSettings(bot_token=...)`)."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)


class Adapter(ABC):
    """A chat surface as `clipbot run` sees it. One instance per entry point; no state."""

    name: ClassVar[str]  # `clipbot run --adapter NAME`, and the settings' prefix CLIPBOT_<NAME>_
    settings_class: ClassVar[type[AdapterSettings]] = AdapterSettings
    # served by `clipbot run` when no other adapter is configured (the local chat); never with others
    default: ClassVar[bool] = False
    install_hint: ClassVar[str] = ""  # what to install when the SDK is missing, e.g. clipbot[discord]

    def load_settings(self, **overrides: object) -> AdapterSettings:
        """This adapter's settings, from the environment and .env (overrides win)."""
        return self.settings_class.load(self.name, **overrides)

    @abstractmethod
    def configured(self, settings: AdapterSettings) -> bool:
        """True when `settings` say to serve this adapter (its tokens are set): `clipbot run` then
        serves it beside every other configured one. Must not need the platform's SDK."""

    def check_installed(self) -> None:
        """Raise `UserError` (see `missing_sdk`) when the platform's SDK is not installed."""

    @abstractmethod
    async def serve(self, app: "App", settings: AdapterSettings, stop_event: asyncio.Event) -> None:
        """Connect and answer until `stop_event` is set (then close every connection and return).
        An error raised here stops `clipbot run` with its message: a `UserError` for what the
        operator must fix (a rejected token), anything else as a crash."""

    def open_history(self, app: "App", settings: AdapterSettings) -> AbstractAsyncContextManager["HistorySource"]:
        """The platform's message history (`bot.events.HistorySource`) without serving: what
        `clipbot index backfill --platform NAME` walks from a shell. Adapters without one refuse."""
        raise UserError(f"The {self.name} adapter cannot read message history from a shell.")


def missing_sdk(adapter: str, exc: ModuleNotFoundError, install: str) -> UserError:
    """The one message for an adapter whose platform packages are not installed."""
    return UserError(f"the {adapter} adapter is not available ({exc}); install {install}")


class ChatSurface(ABC):
    """What a running adapter does for dispatch; `serve` builds one (or several) of these."""

    platform: ClassVar[str]
    app: "App"

    @abstractmethod
    async def deliver(self, conversation: dict, replies: AsyncIterator[Reply]) -> None:
        """Render a reply stream into a conversation recorded earlier (`Request.conversation`),
        as a fresh request's answer would be: progress replaces progress, the final reply ends it."""

    async def delete_message(self, message: dict) -> None:
        """Delete a message the bot posted (`Request.source_message`, this adapter's own shape),
        for the Delete button; raise UserError with what went wrong. Adapters that cannot say so."""
        raise UserError(f"I can't delete messages on {self.platform}.")

    async def resume_followed_jobs(self, *, spawn: Spawn = asyncio.ensure_future,
                                   unreachable: Callable[[str], object] = log.warning) -> list[object]:
        """See `resume_followed_jobs`; `deliver` renders each."""
        return await resume_followed_jobs(self.app, self.platform, self.deliver, spawn=spawn,
                                          unreachable=unreachable)


async def resume_followed_jobs(app: "App", platform: str, deliver: Deliver,
                               *, spawn: Spawn = asyncio.ensure_future,
                               unreachable: Callable[[str], object] = log.warning) -> list[object]:
    """Follow again every long job `platform`'s conversations still wait for (a restarted bot):
    each stream is `deliver`ed into its conversation by a task from `spawn`; a stream that cannot
    be delivered is logged, not raised. With Redis down at start, `unreachable` is told once and
    the jobs are picked up once it is back. Returns what `spawn` returned, one per job."""
    started = []
    async for conversation, replies in app.resume_jobs(platform, unreachable=unreachable):
        started.append(spawn(_deliver_logged(platform, deliver, conversation, replies)))
    return started


async def _deliver_logged(platform: str, deliver: Deliver, conversation: dict, replies: AsyncIterator[Reply]) -> None:
    try:
        await deliver(conversation, replies)
    except Exception:
        log.exception("%s: could not resume answering in %s", platform, conversation)


def count_api_answer(platform: str, status: int, *, ok: bool = True) -> None:
    """One answer of `platform`'s API: an error (HTTP status >= 400, or `ok` false: Slack's
    ok=false in a 200) counts in clipbot_platform_api_errors_total{platform, status}; 429s, the
    rate limits the SDKs wait out, too."""
    if status >= 400 or not ok:
        from engine.observe import metrics

        metrics().platform_errors.labels(platform, str(status) if status >= 400 else "api_error").inc()


def error_reply(text: str | BaseException) -> Reply:
    """The answer to a refused request (a user mistake, a failed download): shown to the asker only."""
    return Reply(text=str(text), error=True, ephemeral=True, final=True)


class Intake:
    """Files people send, as stored `Attachment`s: downloaded (a platform's `Downloader`: trusted
    hosts only, size held), checked as images (`engine.images`) and put in the blob store."""

    def __init__(self, blobs: "BlobStore", limits: ImageLimits, downloader: Downloader | None = None) -> None:
        self.blobs, self.limits, self.downloader = blobs, limits, downloader

    @classmethod
    def of(cls, app: "App", settings: "EngineSettings | None" = None, downloader: Downloader | None = None) -> "Intake":
        """Into `app`'s blob store, held to `settings`' (default: the app's) image limits."""
        return cls(app.engine.blobs, ImageLimits.of(settings or app.settings), downloader)

    async def download(self, url: str, *, filename: str, source_id: str = "",
                       declared_size: int | None = None) -> Attachment:
        """A platform file: a declared size over the limit is refused before any byte is fetched."""
        if self.downloader is None:
            raise UserError("I cannot download files here.")
        return await download_attachment(self.downloader, self.blobs, url, filename=filename or "image",
                                         limits=self.limits, source_id=source_id, declared_size=declared_size)

    def local_file(self, path: str | Path) -> Attachment:
        """A file on this machine (the local chat, the shell). Blocking: run it off the event loop."""
        return file_attachment(self.blobs, path, limits=self.limits)

    async def close(self) -> None:
        if self.downloader is not None:
            await self.downloader.close()
