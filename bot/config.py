"""clipbot's settings in one object: environment variables prefixed CLIPBOT_, or a .env file.

Each plugin and each chat adapter adds its own settings class (`PluginSettings`; Discord's and
Slack's are in their adapter folders), read from `CLIPBOT_<NAME>_...` the same way.

`.env.example` documents every field; keep the two in step (a test checks it).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["PluginSettings", "Settings", "check_test_file_host", "env_prefix"]

_DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "clipbot"


def _split_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _expand_user(value: Path | None) -> Path | None:
    return value.expanduser() if value is not None else None


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLIPBOT_", env_file=".env", extra="ignore")

    # engine
    broker_url: str | None = Field(None, description="Redis URL; unset runs the embedded in-process engine")
    redis_url: str | None = Field(None, description="Redis for job records, events, blobs; defaults to broker_url")
    data_dir: Path = Field(_DEFAULT_DATA_DIR, description="where the embedded engine keeps state and output")
    job_timeout: float = Field(600.0, description="seconds a job may run before the requester gives up")
    queue_timeout: float = Field(120.0, description="seconds a job may wait for a worker before it is cancelled")
    visibility_timeout: int = Field(7200, description="Redis redelivery timeout; must exceed the longest job")
    blob_ttl: int = Field(86400, description="seconds uploaded and generated images are kept at most")
    worker_concurrency: int = Field(1, description="worker child processes (1 per GPU is usual)")
    worker_queues: Annotated[list[str], NoDecode] = Field(
        [], description="queues a worker consumes; empty means every queue the plugins declare")
    # engine: job lifetime and worker health
    job_ttl: int = Field(3600, description="seconds a finished job's record and events are kept")
    max_attempts: int = Field(3, ge=1, description="deliveries of one job before it fails (a job that "
                              "kills its worker every time)")
    worker_dead_after: float = Field(60.0, gt=0, description="seconds without a heartbeat after which a worker "
                                     "process counts as dead: its jobs are queued again, a hung child replaced")
    worker_torch_threads: int = Field(0, ge=0, description="torch threads per worker child; 0: CPU cores / children")

    # models
    clip_model: str = Field("ViT-B-32:laion2b_s34b_b79k", description="ARCH:TAG, ARCH:/path/file, or a preset")
    vqgan_model: str = Field("imagenet_f16_16384", description="official VQGAN name, CONFIG.yaml:CKPT, or a preset")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    model_cache: Path | None = Field(None, description="model weights cache; defaults to data_dir/models")

    # image index (/search)
    index_url: str | None = Field(
        None, description="image index: empty = embedded (SQLite + float16 matrices under data_dir/index), "
        "sqlite:///DIR, or postgresql://... (pgvector >= 0.8)")

    # plugins
    plugins: Annotated[list[str], NoDecode] = Field(["*"], description="allowlist of plugin names; * means all")
    disabled_plugins: Annotated[list[str], NoDecode] = Field([], description="plugin names never loaded")
    extra_plugins: Annotated[list[str], NoDecode] = Field([], description="modules to load as plugins")

    # images
    max_image_bytes: int = Field(25 * 1024 * 1024, description="largest upload accepted, in bytes")
    max_image_pixels: int = Field(40_000_000, description="largest image accepted, in pixels")

    log_level: str = Field("INFO", description="logging level")

    # Tests only: the fakes serve platform files over http on loopback. The API base settings above
    # never make their host a file host (the bot token would follow); this one is refused at load
    # for anything but a loopback HOST:PORT.
    test_file_hosts: Annotated[list[str], NoDecode] = Field(
        [], description="tests only: loopback HOST:PORTs (e.g. 127.0.0.1:8080) trusted for Discord/Slack file "
        "downloads over http, besides the platforms' own https file hosts; anything else is refused")

    _split = field_validator("worker_queues", "plugins", "disabled_plugins", "extra_plugins", "test_file_hosts",
                             mode="before")(_split_list)
    _loopback_only = field_validator("test_file_hosts")(_test_file_hosts)
    # `CLIPBOT_DATA_DIR=~/...` (as .env.example writes it): no shell expands ~ in a .env file.
    _home = field_validator("data_dir", "model_cache", mode="after")(_expand_user)

    @property
    def state_redis_url(self) -> str | None:
        return self.redis_url or self.broker_url

    @property
    def models_dir(self) -> Path:
        return self.model_cache or self.data_dir / "models"

    @property
    def embedded(self) -> bool:
        return not self.broker_url


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
