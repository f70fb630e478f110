"""Dispatch through a real plugin manager with a small in-test plugin."""

import asyncio
import sys
import types

import pytest

from bot.commands import Reply, Request, command
from bot.dispatch import Dispatcher
from bot.hookspecs import hookimpl
from bot.plugins import build_plugin_manager
from tests.conftest import make_settings


def _plugin_module():
    mod = types.ModuleType("dispatch_test_plugin")

    @command
    async def echo(ctx, text: str, times: int = 1) -> Reply:
        """Echo text."""
        return Reply(text=" ".join([text] * times))

    @command
    async def stream(ctx, n: int = 3):
        """Stream replies."""
        for i in range(n):
            yield Reply(text=f"step {i}", progress=i / n)
        # no final reply on purpose: the dispatcher must add one

    @command
    async def boom(ctx) -> Reply:
        """Crash."""
        raise RuntimeError("secret internals")

    @command(admin_only=True)
    async def secret(ctx) -> Reply:
        """Admins only."""
        return Reply(text="ok")

    @command(platforms=("local",))
    async def here(ctx) -> Reply:
        """Local chat only."""
        return Reply(text="here")

    mod.clipbot_commands = hookimpl(lambda: [echo, stream, boom, secret, here])
    return mod


@pytest.fixture
def dispatcher(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dispatch_test_plugin", _plugin_module())
    settings = make_settings(tmp_path, extra_plugins=["dispatch_test_plugin"])
    from engine.app import create_engine

    return Dispatcher(build_plugin_manager(settings), create_engine(settings), settings)


def ask(dispatcher, command, is_admin=False, platform="local", **options):
    async def collect():
        request = Request(command=command, options=options, is_admin=is_admin, platform=platform)
        return [r async for r in dispatcher.handle(request)]

    return asyncio.run(collect())


def test_routes_and_converts(dispatcher):
    replies = ask(dispatcher, "echo", text="hi", times="2")
    assert [r.text for r in replies] == ["hi hi"] and replies[-1].final


def test_stream_gets_a_final_reply(dispatcher):
    replies = ask(dispatcher, "stream", n="2")
    assert [r.text for r in replies[:2]] == ["step 0", "step 1"]
    assert replies[-1].final and not any(r.final for r in replies[:-1])


@pytest.mark.parametrize("command, options, expected", [
    ("nope", {}, "I don't know the command /nope"),
    ("ecoh", {}, "Did you mean /echo?"),
    ("echo", {}, "/echo needs 'text'"),
    ("echo", {"text": "a", "colour": "red"}, "/echo has no option 'colour' (options: text, times)"),
    ("echo", {"text": "a", "times": "lots"}, "must be a whole number"),
    ("secret", {}, "Only admins can use /secret"),
])
def test_user_errors(dispatcher, command, options, expected):
    replies = ask(dispatcher, command, **options)
    assert len(replies) == 1 and replies[0].error and replies[0].final
    assert expected in replies[0].text


def test_a_command_offered_on_some_platforms_is_refused_and_unlisted_elsewhere(dispatcher):
    assert ask(dispatcher, "here")[0].text == "here"
    (refused,) = ask(dispatcher, "here", platform="discord")
    assert refused.error and "/here is not available on discord (only on local)" in refused.text
    assert "here" in ask(dispatcher, "help")[-1].data["commands"]
    assert "here" not in ask(dispatcher, "help", platform="slack")[-1].data["commands"]


def test_admin_allowed(dispatcher):
    assert ask(dispatcher, "secret", is_admin=True)[0].text == "ok"


def test_crash_is_logged_not_shown(dispatcher, caplog):
    replies = ask(dispatcher, "boom")
    assert replies[0].error and "Something went wrong on my side (ref " in replies[0].text
    assert "secret internals" not in replies[0].text
    assert "secret internals" in caplog.text
    # The reply's reference is in the log line of that crash (as CLIPBOT_LOG_FORMAT=json writes it, too).
    import json

    from engine.observe import JsonFormatter

    ref = replies[0].data["ref"]
    assert f"(ref {ref})" in replies[0].text
    (line,) = [json.loads(JsonFormatter().format(r)) for r in caplog.records if f"ref {ref}" in r.getMessage()]
    assert line["ref"] == ref and line["level"] == "ERROR" and "secret internals" in line["exc"]


def test_duplicate_command_names_are_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dispatch_test_plugin", _plugin_module())
    monkeypatch.setitem(sys.modules, "dispatch_test_plugin2", _plugin_module())
    settings = make_settings(tmp_path, extra_plugins=["dispatch_test_plugin", "dispatch_test_plugin2"])
    from engine.app import create_engine

    with pytest.raises(ValueError, match="two plugins define the command /echo"):
        Dispatcher(build_plugin_manager(settings), create_engine(settings), settings)
