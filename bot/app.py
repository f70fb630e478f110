"""The composition root: plugins + engine + dispatcher, built the same way for every process.

The CLI, `clipbot worker`, every chat adapter, the tests and `bot.testing` go through
`open_app`, so there is one way to assemble clipbot.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

from bot.commands import Reply
from bot.dispatch import Dispatcher
from bot.events import ChannelRemoved, HistorySource, ImagePosted, MessageDeleted

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

__all__ = ["App", "open_app"]


class App(Dispatcher):
    """A running clipbot: routes commands (`handle`), and tells plugins what adapters see."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.history_sources: dict[str, HistorySource] = {}  # platform -> its message history

    def history_source(self, platform: str) -> HistorySource | None:
        """The message history of `platform` for backfills: its adapter's, or, for the local chat,
        the pictures posted there (`bot.adapters.local.channel`)."""
        source = self.history_sources.get(platform)
        if source is None and platform == "local":
            from bot.adapters.local.channel import LocalHistory

            source = LocalHistory(self)
        return source

    async def image_posted(self, event: ImagePosted) -> None:
        await self._notify("clipbot_image_posted", event)

    async def message_deleted(self, event: MessageDeleted) -> None:
        await self._notify("clipbot_message_deleted", event)

    async def channel_removed(self, event: ChannelRemoved) -> None:
        await self._notify("clipbot_channel_removed", event)

    async def startup(self) -> None:
        """Adapters call this once they are connected and have registered their history sources."""
        await self._notify("clipbot_startup", None)

    def resume_jobs(self, platform: str, **retry: Any) -> AsyncIterator[tuple[dict, AsyncIterator[Reply]]]:
        """For each long job `platform`'s conversations still wait for (a restarted bot):
        (its `Request.conversation`, its reply stream). The adapter renders each stream into that
        conversation as it would a fresh request's. `unreachable=fn` (and `retry_every`): what to
        do while Redis is down at start (`bot.longjob.resume_jobs`)."""
        from bot.longjob import resume_jobs

        return resume_jobs(self, platform, **retry)

    async def _notify(self, hook_name: str, event: Any) -> None:
        # Each plugin's implementation runs on its own, off the loop, so one broken plugin neither
        # blocks the adapter nor stops the others.
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            kwargs = {"app": self} if event is None else {"app": self, "event": event}
            wanted = {k: v for k, v in kwargs.items() if k in impl.argnames}
            try:
                await asyncio.to_thread(impl.function, **wanted)
            except Exception:
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)


@contextmanager
def open_app(settings: "Settings", *, start_worker: bool = True) -> Iterator[App]:
    """Plugins, engine and dispatcher for these settings. With the embedded engine (no broker
    URL) and `start_worker`, the in-process worker runs inside until the block ends."""
    from bot.plugins import build_plugin_manager, declared_queues, plugin_settings
    from engine.app import create_engine
    from engine.datadir import make_dir, tighten

    tighten(make_dir(settings.data_dir))  # private: what an older version left readable too
    pm = build_plugin_manager(settings)
    extra = plugin_settings(pm)
    engine = create_engine(settings, queues=declared_queues(pm).values(), plugin_settings=extra)
    app = App(pm, engine, settings, extra)
    if engine.embedded and start_worker:
        engine.start_embedded(app.task_modules())
    try:
        yield app
    finally:
        engine.stop()
