"""Fixtures for end-to-end tests: a fake Discord world and `clipbot run` as a subprocess against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import clipbot_env
from tests.fakes.discord_fake import BOT_TOKEN, MANAGE_GUILD, VIEW_CHANNEL, FakeDiscord
from tests.support.processes import LoggedProcess


@dataclass
class World:
    fake: FakeDiscord
    guild: str
    general: str
    private: str
    mods_role: str
    alice: dict  # a member with no special role: cannot see #private
    mod: dict  # Manage Server, sees #private


@pytest.fixture
def world():
    fake = FakeDiscord(attachment_size_limit=256 * 1024).start()
    guild = fake.add_guild("Team")
    mods = fake.add_role(guild, "mods", MANAGE_GUILD)
    general = fake.add_channel(guild, "general")
    private = fake.add_channel(guild, "private", overwrites=[
        {"id": guild, "type": 0, "deny": VIEW_CHANNEL}, {"id": mods, "type": 0, "allow": VIEW_CHANNEL},
        # the bot was added to the private channel, as an admin does (Discord sends it nothing otherwise)
        {"id": fake.app_id, "type": 1, "allow": VIEW_CHANNEL}])
    alice = fake.add_member(guild, "alice")
    mod = fake.add_member(guild, "mod", roles=[mods])
    yield World(fake, guild, general, private, mods, alice, mod)
    fake.stop()


def fake_file_host(fake: FakeDiscord) -> str:
    """CLIPBOT_TEST_FILE_HOSTS for the fake's CDN: the API base alone no longer makes it a file host."""
    return f"127.0.0.1:{fake.port}"


class BotProcess(LoggedProcess):
    """`clipbot run` serving the fake Discord, as an operator starts it."""

    name, log_tail, grace = "clipbot run", 8000, 30.0

    def __init__(self, world: World, data_dir: Path, log_path: Path, **env: str) -> None:
        self.world, self.data_dir = world, data_dir
        fake = world.fake
        settings = {"DISCORD_TOKEN": BOT_TOKEN, "CLIPBOT_DISCORD_API_BASE": fake.api_base,
                    "CLIPBOT_TEST_FILE_HOSTS": fake_file_host(fake),
                    "CLIPBOT_DISCORD_GATEWAY_URL": fake.gateway_url, "CLIPBOT_DISCORD_DEV_GUILD": world.guild,
                    "CLIPBOT_EXTRA_PLUGINS": "tests.support.probe_plugin", "CLIPBOT_DISCORD_EDIT_INTERVAL": "1.5", "PYTHONASYNCIODEBUG": os.environ.get("PROBE_ASYNCIO_DEBUG", "")}
        redis_url = env.pop("redis_url", None)  # set: Redis engine, jobs run on `clipbot worker`s
        settings.update(env)
        super().__init__([sys.executable, "-m", "bot.cli", "run"], log_path,
                         env=clipbot_env(data_dir, redis_url, **settings), stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 60) -> "BotProcess":
        super().wait_ready(lambda: "Discord: connected as" in self.log(), what="clipbot run to connect",
                           timeout=timeout)
        return self

    def events(self) -> list[dict]:
        path = self.data_dir / "probe-events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def start_bot(world, tmp_path):
    started: list[BotProcess] = []
    data_dir = tmp_path / "data"
    data_dir.mkdir()

    def start(**env: str) -> BotProcess:
        bot = BotProcess(world, data_dir, tmp_path / f"bot{len(started)}.log", **env)
        started.append(bot)
        return bot.wait_ready()

    yield start
    for i, bot in enumerate(started):
        bot.stop()
        print(f"---- clipbot run #{i} log ----\n{bot.log()}")  # pytest shows it when the test fails
