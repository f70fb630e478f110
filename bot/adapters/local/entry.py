"""The local chat's registration in `clipbot.adapters`: the embedded default of `clipbot run`.

The chat itself is `bot.adapters.local.chat` (`LocalAdapter`), imported when served.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from bot.adapters.base import Adapter, AdapterSettings

__all__ = ["LocalChat", "adapter"]


class LocalChat(Adapter):
    """A terminal chat: served when no platform adapter is configured, or with --adapter local."""

    name = "local"
    default = True

    def configured(self, settings: AdapterSettings) -> bool:
        return False  # never served beside the platforms: it owns the terminal

    async def serve(self, app: Any, settings: AdapterSettings, stop_event: asyncio.Event) -> None:
        from bot.adapters.local.chat import LocalAdapter

        print(f"(logs: {Path(app.settings.data_dir) / 'logs' / 'clipbot.log'})", file=sys.stderr)
        await LocalAdapter(app).repl()


adapter = LocalChat()
