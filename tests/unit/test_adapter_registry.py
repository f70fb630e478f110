"""The adapter registry: pyproject's `clipbot.adapters` entry points and the built-ins in code agree,
every built-in loads as what it says it is, and an adapter whose SDK is missing says what to install."""

import asyncio
import subprocess
import sys
import tomllib

import pytest

from bot.adapters.base import Adapter, AdapterSettings, resume_followed_jobs
from bot.adapters.registry import BUILTIN_ADAPTERS, GROUP, adapter_names, load_adapter
from tests.conftest import ROOT


def test_pyproject_entry_points_are_the_builtins_in_code():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    assert declared == BUILTIN_ADAPTERS
    assert adapter_names()[:3] == ["local", "discord", "slack"]


def test_every_builtin_loads_as_an_adapter_with_its_own_settings():
    for name in BUILTIN_ADAPTERS:
        adapter = load_adapter(name)
        assert isinstance(adapter, Adapter) and adapter.name == name
        assert issubclass(adapter.settings_class, AdapterSettings)
    assert [n for n in BUILTIN_ADAPTERS if load_adapter(n).default] == ["local"]
    with pytest.raises(KeyError):
        load_adapter("irc")


def test_adapter_settings_keep_todays_variables(monkeypatch):
    monkeypatch.setenv("DISCORD_TOKEN", "d-token")
    monkeypatch.setenv("CLIPBOT_DISCORD_DEV_GUILD", "42")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("CLIPBOT_SLACK_ADMINS", "U1, U2")
    monkeypatch.setenv("BOT_TOKEN", "not-slack's")  # an unprefixed name is never read
    discord, slack = load_adapter("discord"), load_adapter("slack")
    discord_settings, slack_settings = discord.load_settings(_env_file=None), slack.load_settings(_env_file=None)
    assert discord_settings.token.get_secret_value() == "d-token" and discord_settings.dev_guild == 42
    assert slack_settings.bot_token == "xoxb-1" and slack_settings.admins == ["U1", "U2"]
    assert discord.configured(discord_settings) and slack.configured(slack_settings)
    monkeypatch.delenv("SLACK_BOT_TOKEN")
    assert not slack.configured(slack.load_settings(_env_file=None))


def test_a_bad_adapter_setting_names_its_variable(monkeypatch):
    from bot.adapters.registry import load_adapter_settings
    from engine.errors import UserError

    monkeypatch.setenv("CLIPBOT_DISCORD_DEV_GUILD", "my server")
    with pytest.raises(UserError, match="^invalid setting CLIPBOT_DISCORD_DEV_GUILD: "):
        load_adapter_settings(load_adapter("discord"))


_WITHOUT_DISCORD = """
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):  # as if clipbot[discord] were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "discord":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Hide())
from bot.adapters.registry import load_adapter
from engine.errors import UserError
adapter = load_adapter("discord")
assert adapter.configured(adapter.settings_class(_env_file=None, token="t"))
try:
    adapter.check_installed()
except UserError as exc:
    print(exc)
"""


def test_a_missing_sdk_is_one_line_saying_what_to_install():
    out = subprocess.run([sys.executable, "-c", _WITHOUT_DISCORD], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("the discord adapter is not available (No module named 'discord'); "
                                  "install clipbot[discord]")


class _Jobs:
    """An app with two followed jobs: one delivers, one fails while delivering."""

    def __init__(self):
        self.asked = []

    async def resume_jobs(self, platform, **retry):
        self.asked.append((platform, sorted(retry)))
        for channel in ("a", "b"):
            yield {"channel": channel}, _replies(channel)


async def _replies(channel):
    yield channel


def test_resume_followed_jobs_delivers_each_and_logs_a_failure(caplog):
    app, delivered = _Jobs(), []

    async def deliver(conversation, replies):
        if conversation["channel"] == "b":
            raise RuntimeError("gone")
        delivered.extend([r async for r in replies])

    async def main():
        tasks = await resume_followed_jobs(app, "irc", deliver, unreachable=print)
        await asyncio.gather(*tasks)
        return tasks

    assert len(asyncio.run(main())) == 2
    assert delivered == ["a"] and app.asked == [("irc", ["unreachable"])]
    assert "could not resume answering in {'channel': 'b'}" in caplog.text


def test_a_broken_adapter_is_skipped_by_the_auto_rule_and_named_when_asked(monkeypatch, caplog):
    import argparse

    from bot import cli
    from bot.adapters import registry
    from engine.errors import UserError

    for token in ("DISCORD_TOKEN", "CLIPBOT_DISCORD_TOKEN", "SLACK_BOT_TOKEN", "CLIPBOT_SLACK_BOT_TOKEN"):
        monkeypatch.delenv(token, raising=False)
    monkeypatch.setitem(registry.BUILTIN_ADAPTERS, "broken", "no_such_clipbot_adapter_module:adapter")
    assert cli._platform_adapters(argparse.Namespace(adapter="auto"), None) == []  # the local chat, as before
    assert "adapter broken not loaded: ModuleNotFoundError" in caplog.text
    with pytest.raises(UserError, match=r"the broken adapter could not be loaded \(ModuleNotFoundError"):
        cli._platform_adapters(argparse.Namespace(adapter="broken"), None)
