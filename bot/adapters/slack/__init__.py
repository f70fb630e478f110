"""Slack, as a registered adapter: its settings and the entry point `clipbot.adapters` names.

Importable without slack-bolt. The adapter itself is in the modules beside this one:
- `app`: the bolt app: commands, shortcuts, buttons, mentions, events (`SlackAdapter`, `serve`);
- `post`: a `Reply` stream rendered as messages, edits and uploads (`ReplyPoster`);
- `files`: private file downloads, index events, history, event dedupe;
- `manifest`: the Slack app manifest for the loaded plugins (`python -m bot.adapters.slack.manifest`).
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import NoDecode

from bot.adapters.base import Adapter, AdapterSettings, missing_sdk

__all__ = ["SlackSettings", "adapter"]


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class SlackSettings(AdapterSettings):
    """CLIPBOT_SLACK_*; the three secrets use Slack's own unprefixed variable names."""

    bot_token: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN"),
        description="Slack bot token (xoxb-...); set, `clipbot run` serves Slack")
    app_token: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_APP_TOKEN"),
        description="Slack app-level token (xapp-..., connections:write); set: Socket Mode, unset: HTTP mode")
    signing_secret: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET"),
        description="Slack signing secret; HTTP mode verifies every request with it")
    port: int = Field(3000, description="HTTP mode: port serving /slack/events (0 = any free port)")
    host: str = Field("0.0.0.0", description="HTTP mode: address to listen on")
    api_url: str | None = Field(None, description="Slack Web API base URL override (GovSlack, tests)")
    command_prefix: str = Field("", description="prefix of the Slack slash commands, e.g. cb- for /cb-whatis")
    admins: Annotated[list[str], NoDecode] = Field([], description="Slack user ids treated as clipbot admins")
    progress_interval: float = Field(3.0, description="seconds between progress edits/snapshots per job")
    channel_interval: float = Field(1.1, description="seconds between bot posts/edits in one channel")

    _split = field_validator("admins", mode="before")(_split_list)


class Slack(Adapter):
    name = "slack"
    settings_class = SlackSettings

    def configured(self, settings: SlackSettings) -> bool:  # type: ignore[override]
        return bool(settings.bot_token)

    async def serve(self, app: Any, settings: SlackSettings, stop_event: asyncio.Event) -> None:  # type: ignore[override]
        await _implementation().serve(app, app.settings, settings, stop_event)

    @asynccontextmanager
    async def open_history(self, app: Any, settings: SlackSettings) -> AsyncIterator[Any]:  # type: ignore[override]
        async with _implementation().open_history(app, app.settings, settings) as history:
            yield history


def _implementation() -> Any:
    # bot.adapters.slack.app imports without slack-bolt and says what to install when served
    import importlib

    try:
        return importlib.import_module("bot.adapters.slack.app")
    except ModuleNotFoundError as exc:
        raise missing_sdk("slack", exc, "clipbot[slack]") from None


adapter = Slack()
