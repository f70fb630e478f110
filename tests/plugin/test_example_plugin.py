"""examples/clipbot-hello is installed with pip, as a user would, and found by its entry point."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, clipbot_env


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example into a private folder (no deps: clipbot itself is installed)."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--target", str(target), str(ROOT / "examples" / "clipbot-hello")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert list(target.glob("clipbot_hello-*.dist-info/entry_points.txt"))
    return target


def clipbot(site, data_dir, *args, stdin=None, **env):
    environ = clipbot_env(data_dir, None, **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=240, env=environ)


def test_found_through_its_entry_point(site, tmp_path):
    out = clipbot(site, tmp_path, "plugins")
    assert out.returncode == 0, out.stderr
    assert "hello: /hello /shout" in out.stdout


def test_commands_and_engine_task_work(site, tmp_path):
    out = clipbot(site, tmp_path, "run", stdin="/hello name: Ada\n/shout hi times: 2\n/shout hi times: 9\n/quit\n")
    assert out.returncode == 0, out.stderr
    assert "Hello, Ada!" in out.stdout
    assert "HI! HI!" in out.stdout  # computed by the plugin's task on the embedded engine's io queue
    assert "error: times must be between 1 and 5." in out.stdout


def test_allowlist_can_turn_it_off(site, tmp_path):
    out = clipbot(site, tmp_path, "plugins", CLIPBOT_DISABLED_PLUGINS="hello")
    assert out.returncode == 0 and "hello:" not in out.stdout
    out = clipbot(site, tmp_path, "run", stdin="/hello\n/quit\n", CLIPBOT_PLUGINS="help,whatis")
    assert "I don't know the command /hello" in out.stdout


@pytest.mark.slow
def test_every_command_is_a_cli_verb_through_dispatch(site, tmp_path):
    out = clipbot(site, tmp_path, "shout", "hi", "--times", "2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"text": "HI! HI!"}
    out = clipbot(site, tmp_path, "hello", "--name", "Ada")
    assert out.returncode == 0 and out.stdout.strip() == "Hello, Ada!"
    out = clipbot(site, tmp_path, "shout", "hi", "--times", "9")
    assert out.returncode == 2 and out.stderr.strip() == "clipbot: times must be between 1 and 5."


def test_testbot_harness_runs_the_plugin_and_its_task(site, monkeypatch, tmp_path):
    from bot.testing import TestBot

    monkeypatch.syspath_prepend(str(site))
    with TestBot(plugins=["help"], extra_plugins=["clipbot_hello"], data_dir=tmp_path) as bot:
        assert bot.ask("/hello name: Ada").text == "Hello, Ada!"
        reply = bot.ask("/shout hey times: 3")
        assert reply.data == {"text": "HEY! HEY! HEY!"} and not reply.error
        assert bot.ask("/whatis x.png").error  # only the plugins asked for are loaded
        assert "HEY! HEY! HEY!" in bot.output.getvalue()
