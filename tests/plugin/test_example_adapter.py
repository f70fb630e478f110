"""examples/clipbot-lines, a fourth chat adapter, is installed with pip as a user would, found by
its `clipbot.adapters` entry point, and answers a real /whatis through `clipbot run`."""

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, clipbot_env, write_image


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """pip-install the example into a private folder (no deps: clipbot itself is installed)."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-cache-dir",
         "--target", str(target), str(ROOT / "examples" / "clipbot-lines")],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert list(target.glob("clipbot_lines-*.dist-info/entry_points.txt"))
    return target


def clipbot(site, data_dir, *args, **env):
    environ = clipbot_env(data_dir, None, **env)
    environ["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, text=True, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=240, env=environ)


def test_it_is_a_choice_of_clipbot_run(site, tmp_path):
    out = clipbot(site, tmp_path, "run", "--help")
    assert out.returncode == 0 and "{auto,local,discord,slack,lines}" in out.stdout


def test_it_answers_a_command_end_to_end(site, tmp_path):
    inbox = tmp_path / "inbox.txt"
    inbox.write_text(f"/whatis {write_image(tmp_path / 'red.png')} labels: cat, dog, person\n"
                     "/whatis /no/such/file.png\n/nosuch\n")
    out = clipbot(site, tmp_path, "run", "--adapter", "lines", CLIPBOT_LINES_INBOX=str(inbox))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("1. ") for line in lines), out.stdout  # the ranked guesses
    assert {"cat", "dog", "person"} <= set(out.stdout.replace(":", " ").split())
    assert "tiny-test is a random test model" in out.stdout
    assert any(line.startswith("error: ") and "No such file" in line for line in lines)
    assert "error: I don't know the command /nosuch" in out.stdout
    assert "clipbot local chat" not in out.stdout


def test_configured_it_is_served_by_the_auto_rule(site, tmp_path):
    inbox = tmp_path / "inbox.txt"
    inbox.write_text("/help\n")
    out = clipbot(site, tmp_path, "run", CLIPBOT_LINES_INBOX=str(inbox))
    assert out.returncode == 0, out.stderr
    assert "/whatis" in out.stdout and "clipbot local chat" not in out.stdout
    assert "clipbot local chat" in clipbot(site, tmp_path, "run").stdout  # unset: the local chat, as before
