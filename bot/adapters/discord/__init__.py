"""Discord, as a registered adapter: its settings and the entry point `clipbot.adapters` names.

Importable without discord.py (`clipbot run` checks the settings first, then says what to
install). The adapter itself is in the modules beside this one:
- `client`: the client, commands, clicks, posted and deleted images (`DiscordAdapter`, `serve`);
- `replies`: a `Reply` stream rendered as edits of one message, threads, buttons;
- `channels`: who may read what (roles and overwrites);
- `payloads`: application-command JSON, options, image fitting (no discord.py);
- `history`: the message history backfill walks.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from pydantic import AliasChoices, Field, SecretStr

from bot.adapters.base import Adapter, AdapterSettings, missing_sdk

__all__ = ["DiscordSettings", "adapter"]


class DiscordSettings(AdapterSettings):
    """CLIPBOT_DISCORD_*; the token is Discord's own DISCORD_TOKEN."""

    token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DISCORD_TOKEN", "CLIPBOT_DISCORD_TOKEN"),
        description="Discord bot token (env DISCORD_TOKEN); set: `clipbot run` serves Discord")
    dev_guild: int | None = Field(None, description="sync commands to this server id only (instant); "
                                  "unset: sync globally")
    api_base: str | None = Field(None, description="Discord REST base URL override, e.g. a rate-limit "
                                 "proxy (default https://discord.com/api/v10)")
    gateway_url: str | None = Field(None, description="Discord gateway URL override (default "
                                    "wss://gateway.discord.gg/)")
    edit_interval: float = Field(2.0, description="seconds between progress edits in one channel")
    token_ttl: float = Field(840.0, description="seconds an interaction token is used before answers "
                             "move to channel messages (Discord: 15 min)")


class Discord(Adapter):
    name = "discord"
    settings_class = DiscordSettings

    def configured(self, settings: DiscordSettings) -> bool:  # type: ignore[override]
        return bool(settings.token)

    def check_installed(self) -> None:
        _implementation()

    async def serve(self, app: Any, settings: DiscordSettings, stop_event: asyncio.Event) -> None:  # type: ignore[override]
        await _implementation().serve(app, app.settings, settings, stop_event)

    @asynccontextmanager
    async def open_history(self, app: Any, settings: DiscordSettings) -> AsyncIterator[Any]:  # type: ignore[override]
        async with _implementation().open_history(app, app.settings, settings) as history:
            yield history


def _implementation() -> Any:
    import importlib

    try:
        return importlib.import_module("bot.adapters.discord.client")
    except ModuleNotFoundError as exc:
        raise missing_sdk("discord", exc, "clipbot[discord]") from None


adapter = Discord()
