"""clipbot's settings in one object: environment variables prefixed CLIPBOT_, or a .env file.

Each plugin and each chat adapter adds its own settings class (`PluginSettings`; Discord's and
Slack's are in their adapter folders), read from `CLIPBOT_<NAME>_...` the same way.

`.env.example` documents every field; keep the two in step (a test checks it).
"""

from __future__ import annotations

import ipaddress
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
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


    # Tests only: the fakes serve platform files over http on loopback. The API base settings above
    # never make their host a file host (the bot token would follow); this one is refused at load
    # for anything but a loopback HOST:PORT.
    test_file_hosts: Annotated[list[str], NoDecode] = Field(
        [], description="tests only: loopback HOST:PORTs (e.g. 127.0.0.1:8080) trusted for Discord/Slack file "
        "downloads over http, besides the platforms' own https file hosts; anything else is refused")

    _split = field_validator("plugins", "disabled_plugins", "extra_plugins", "test_file_hosts",
                             mode="before")(split_list)
    _loopback_only = field_validator("test_file_hosts")(_test_file_hosts)


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
