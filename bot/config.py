"""All clipbot settings in one object: environment variables prefixed CLIPBOT_, or a .env file.

`.env.example` documents every field; keep the two in step (a test checks it).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.settings import EngineSettings, split_list

__all__ = ["EngineSettings", "PluginSettings", "Settings", "check_test_file_host", "env_prefix"]

def check_test_file_host(item: str) -> str:
    """`HOST:PORT` on this machine (127.0.0.0/8, ::1, localhost), normalised; ValueError otherwise.

    Tests serve platform files from a fake on loopback; no setting may widen where the bot fetches
    files (and sends its tokens) to another machine."""
    parts = urlsplit("//" + item.strip())
    try:
        port = parts.port
    except ValueError:
        port = None
    host = (parts.hostname or "").lower()
    if not host or port is None or parts.path or parts.username is not None or not _is_loopback(host):
        raise ValueError(f"{item!r} is not a loopback HOST:PORT (127.0.0.1:PORT, [::1]:PORT or localhost:PORT); "
                         "it is only for tests that serve files from this machine")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _test_file_hosts(value: object) -> object:
    return [check_test_file_host(item) for item in value] if isinstance(value, list) else value


class Settings(EngineSettings):
    """The engine's settings (`engine.settings.EngineSettings`) plus the chat side's: plugins, adapters."""

    # plugins
    plugins: Annotated[list[str], NoDecode] = Field(["*"], description="allowlist of plugin names; * means all")
    disabled_plugins: Annotated[list[str], NoDecode] = Field([], description="plugin names never loaded")
    extra_plugins: Annotated[list[str], NoDecode] = Field([], description="modules to load as plugins")

    # Discord adapter (bot/adapters/discord.py); `clipbot run` serves Discord when the token is set
    discord_token: SecretStr | None = Field(
        None, validation_alias=AliasChoices("DISCORD_TOKEN", "CLIPBOT_DISCORD_TOKEN"),
        description="Discord bot token (env DISCORD_TOKEN); set: `clipbot run` serves Discord")
    discord_dev_guild: int | None = Field(None, description="sync commands to this server id only (instant); "
                                          "unset: sync globally")
    discord_api_base: str | None = Field(None, description="Discord REST base URL override, e.g. a rate-limit "
                                         "proxy (default https://discord.com/api/v10)")
    discord_gateway_url: str | None = Field(None, description="Discord gateway URL override (default "
                                            "wss://gateway.discord.gg/)")
    discord_edit_interval: float = Field(2.0, description="seconds between progress edits in one channel")
    discord_token_ttl: float = Field(840.0, description="seconds an interaction token is used before answers "
                                     "move to channel messages (Discord: 15 min)")

    # Slack (the three secrets use Slack's own unprefixed variable names)
    slack_bot_token: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_BOT_TOKEN", "slack_bot_token"),
        description="Slack bot token (xoxb-...); set, `clipbot run` serves Slack")
    slack_app_token: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_APP_TOKEN", "slack_app_token"),
        description="Slack app-level token (xapp-..., connections:write); set: Socket Mode, unset: HTTP mode")
    slack_signing_secret: str | None = Field(
        None, validation_alias=AliasChoices("SLACK_SIGNING_SECRET", "slack_signing_secret"),
        description="Slack signing secret; HTTP mode verifies every request with it")
    slack_port: int = Field(3000, description="HTTP mode: port serving /slack/events (0 = any free port)")
    slack_host: str = Field("0.0.0.0", description="HTTP mode: address to listen on")
    slack_api_url: str | None = Field(None, description="Slack Web API base URL override (GovSlack, tests)")
    slack_command_prefix: str = Field("", description="prefix of the Slack slash commands, e.g. cb- for /cb-whatis")
    slack_admins: Annotated[list[str], NoDecode] = Field([], description="Slack user ids treated as clipbot admins")
    slack_progress_interval: float = Field(3.0, description="seconds between progress edits/snapshots per job")
    slack_channel_interval: float = Field(1.1, description="seconds between bot posts/edits in one channel")

    # Tests only: the fakes serve platform files over http on loopback. The API base settings above
    # never make their host a file host (the bot token would follow); this one is refused at load
    # for anything but a loopback HOST:PORT.
    test_file_hosts: Annotated[list[str], NoDecode] = Field(
        [], description="tests only: loopback HOST:PORTs (e.g. 127.0.0.1:8080) trusted for Discord/Slack file "
        "downloads over http, besides the platforms' own https file hosts; anything else is refused")

    _split = field_validator("plugins", "disabled_plugins", "extra_plugins", "test_file_hosts",
                             mode="before")(split_list)
    _loopback_only = field_validator("test_file_hosts")(_test_file_hosts)
    _split_slack = field_validator("slack_admins", mode="before")(split_list)


def env_prefix(plugin_name: str) -> str:
    """`CLIPBOT_<PLUGIN>_`: where a plugin's settings live in the environment."""
    return "CLIPBOT_" + plugin_name.upper().replace("-", "_").replace(".", "_") + "_"


class PluginSettings(BaseSettings):
    """Base of a plugin's settings (`clipbot_settings` hook). Subclass it with pydantic fields and
    a `description` on each; the prefix `CLIPBOT_<PLUGIN>_` is applied when the plugin loads."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    @classmethod
    def load(cls, plugin_name: str, **overrides: object) -> "PluginSettings":
        return cls(_env_prefix=env_prefix(plugin_name), **overrides)
