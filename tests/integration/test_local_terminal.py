"""`clipbot run` at a real terminal (a pseudo-terminal; embedded engine, tiny presets): commands
run side by side, /cancel and Ctrl-C stop a running job, a second Ctrl-C leaves, and leaving
while a job draws exits cleanly (it used to abort in torch: "terminate called without an
active exception")."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios

from tests.conftest import ROOT, clipbot_env
from tests.support.polling import wait_until

LONG = "steps: 1000 size: 64 every: 100"  # draws for a minute or more: still running while we type
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


class Terminal:
    """`clipbot run` with a pseudo-terminal for stdin, stdout and stderr."""

    def __init__(self, data_dir) -> None:
        self._fd, tty = pty.openpty()
        fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))  # wide: no wrapped lines
        env = clipbot_env(data_dir, None, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run"], cwd=ROOT, env=env,
                                     stdin=tty, stdout=tty, stderr=tty, start_new_session=True)
        os.close(tty)
        self._raw = b""

    @property
    def text(self) -> str:
        """What it printed so far, without the terminal's escape sequences."""
        self._drain()
        return _ESCAPES.sub("", self._raw.decode(errors="replace"))

    def type(self, keys: str) -> None:
        os.write(self._fd, keys.encode())

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        return wait_until(lambda: re.search(pattern, self.text), timeout=timeout, what=repr(pattern),
                          detail=lambda: self.text[-3000:])

    def exit_code(self, timeout: float = 60) -> int:
        wait_until(lambda: self.proc.poll() is not None, timeout=timeout, what="clipbot to exit",
                   detail=lambda: self.text[-3000:])
        self._drain()
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        os.close(self._fd)

    def _drain(self) -> None:
        while select.select([self._fd], [], [], 0)[0]:
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # the other side closed (the process exited)
                return
            if not chunk:
                return
            self._raw += chunk


def _started(terminal: Terminal, prompt: str) -> str:
    """Type an /imagine; its job id, once it is drawing (its first snapshot is saved)."""
    before = terminal.text.count("step-0000.png]")
    terminal.type(f"/imagine {prompt} {LONG}\r")
    wait_until(lambda: terminal.text.count("step-0000.png]") > before, timeout=120,
               what=f"/imagine {prompt} to start drawing", detail=lambda: terminal.text[-3000:])
    return re.findall(r"\[Cancel\] /cancel job: ([0-9a-f]+)", terminal.text)[-1]


def test_commands_run_side_by_side_and_cancel_works(tmp_path):
    terminal = Terminal(tmp_path / "data")
    try:
        terminal.wait_for(r"model: tiny-test \(built in")
        job = _started(terminal, "a slow fox")
        terminal.type("/help cancel\r")
        terminal.wait_for(r"Usage: /cancel job: <text>")  # answered while the fox is drawn
        assert "a slow fox: cancelled." not in terminal.text and "seed " not in terminal.text
        terminal.type(f"/cancel job: {job}\r")
        terminal.wait_for(r"Imagining a slow fox: cancelled\.")

        _started(terminal, "a slow cat")
        terminal.type("\x03")  # the Ctrl-C key, read by the prompt
        terminal.wait_for(r"\(Ctrl-C: cancelling 1 running command; Ctrl-C again leaves\)")
        terminal.wait_for(r"Imagining a slow cat: cancelled\.")

        _started(terminal, "a slow owl")
        terminal.type("/quit\r")  # leaves with the owl still drawing on the embedded worker
        assert terminal.exit_code() == 0, terminal.text[-3000:]
        assert "terminate called" not in terminal.text and "Traceback" not in terminal.text, terminal.text[-3000:]
    finally:
        terminal.close()
    history = tmp_path / "data" / "local" / "chat-history"
    assert stat.S_IMODE(history.stat().st_mode) == 0o600
    assert f"/cancel job: {job}" in history.read_text()


def test_first_sigint_cancels_the_second_leaves(tmp_path):
    terminal = Terminal(tmp_path / "data")
    try:
        _started(terminal, "a slow heron")
        os.kill(terminal.proc.pid, signal.SIGINT)
        terminal.wait_for(r"\(Ctrl-C: cancelling 1 running command; Ctrl-C again leaves\)")
        terminal.wait_for(r"Imagining a slow heron: cancelled\.")
        _started(terminal, "a slow crane")  # a line typed: the next Ctrl-C is a first one again
        os.kill(terminal.proc.pid, signal.SIGINT)
        terminal.wait_for(r"cancelling 1 running command(.|\n)*cancelling 1 running command")
        os.kill(terminal.proc.pid, signal.SIGINT)  # at once: the crane may still be drawing
        terminal.wait_for(r"\(Ctrl-C again: leaving\)")
        assert terminal.exit_code() == 130, terminal.text[-3000:]
        assert "terminate called" not in terminal.text and "Traceback" not in terminal.text, terminal.text[-3000:]
    finally:
        terminal.close()
