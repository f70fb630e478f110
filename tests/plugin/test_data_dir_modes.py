"""The data folder is private (folders 0700, files 0600) after real work: /whatis, /post, an index
add, /search and /imagine, through the CLI (which sets its umask) and through the local chat
embedded in a process with a loose umask (where only the explicit modes count). Both start on a
data folder that an older version left readable, which must be tightened at start."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clipbot_env, write_image

EMBEDDED_RUN = """
import os, sys
os.umask(0o022)
from bot.testing import TestBot
data_dir, picture = sys.argv[1], sys.argv[2]
with TestBot(data_dir=data_dir, channel_id="general") as bot:
    for line in (f"/whatis {picture} labels: cat, dog", f"/post {picture}", f"/index add images: {picture}",
                 "/search red", "/imagine a red boat steps: 2 size: 32 every: 1 drawer: pixels"):
        reply = bot.ask(line)
        assert not reply.error, (line, reply.text)
print("done")
"""


def _older_version_left(data_dir: Path) -> None:
    (data_dir / "output").mkdir(parents=True)
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "output", 0o755)
    old = data_dir / "output" / "old-chart.png"
    old.write_bytes(b"png")
    os.chmod(old, 0o644)


def _loose(data_dir: Path) -> list[str]:
    """Every folder that is not 0700 and every file that is not 0600, with its mode."""
    found = []
    for path in [data_dir, *data_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            found.append(f"{oct(mode)} {path.relative_to(data_dir.parent)}")
    return found


def _files(data_dir: Path) -> set[str]:
    return {str(p.relative_to(data_dir)) for p in data_dir.rglob("*") if p.is_file()}


def test_embedded_chat_leaves_only_private_files_under_a_loose_umask(tmp_path):
    data_dir = tmp_path / "data"
    _older_version_left(data_dir)
    picture = write_image(tmp_path / "red.png", size=(90, 70))
    out = subprocess.run([sys.executable, "-c", EMBEDDED_RUN, str(data_dir), str(picture)], cwd=ROOT,
                         env=clipbot_env(data_dir, None), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "done" in out.stdout, out.stderr[-3000:]
    files = _files(data_dir)
    # What the run wrote: job state, the index (thumbnails), label cache, posted files, charts.
    assert {"state.sqlite3", "index/index.sqlite3"} <= files
    assert any(f.startswith("index/matrices/") for f in files) and any(f.startswith("local/files/") for f in files)
    assert any(f.startswith("cache/labels/") and f.endswith(".pt") for f in files)
    assert sum(f.startswith("output/") for f in files) >= 3
    assert _loose(data_dir) == []


@pytest.mark.slow
def test_cli_leaves_only_private_files(tmp_path):
    data_dir = tmp_path / "data"
    _older_version_left(data_dir)
    picture = write_image(tmp_path / "red.png", size=(90, 70))
    env = clipbot_env(data_dir, None)
    for args in (["whatis", str(picture), "--labels", "cat, dog"], ["post", str(picture)],
                 ["index", "add", str(picture)], ["search", "red"]):
        out = subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, umask=0o022)
        assert out.returncode == 0, (args, out.stderr)
    files = _files(data_dir)
    assert {"state.sqlite3", "index/index.sqlite3", "logs/clipbot.log"} <= files
    assert _loose(data_dir) == []
