"""One child process with a log, for every test (and bench) that starts `clipbot run` or `clipbot worker`
as an operator does: in its own session, stdout and stderr appended to one file that a failing test
prints."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from tests.support.polling import wait_until

ROOT = Path(__file__).resolve().parents[2]


class LoggedProcess:
    """`command` started with `env` in a new session (so a signal reaches its children too), its output
    appended to `log_path`. `log()` is the file's tail, `stop()` signals then kills after `grace` seconds."""

    name = "the process"
    log_tail = 6000  # characters of the log a failure message shows
    grace = 20.0  # seconds between the polite signal and SIGKILL

    def __init__(self, command: Sequence[str], log_path: Path, *, env: dict[str, str], cwd: Path = ROOT,
                 whole_group: bool = True, **popen: Any) -> None:
        self.log_path, self.whole_group = log_path, whole_group
        self.log_start = log_path.stat().st_size if log_path.exists() else 0  # where this run's lines begin
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **popen)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-self.log_tail:]

    def run_log(self) -> str:
        """This run's lines only (a log file that several runs appended to)."""
        with open(self.log_path, "rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited early ({self.proc.returncode}):\n{self.log()}")

    def wait_ready(self, predicate: Callable[[], Any], *, what: str, timeout: float) -> Any:
        """The predicate's first true value; an AssertionError with the log if the process exits first."""
        def seen() -> Any:
            value = predicate()
            if not value:
                self.check_running()
            return value

        return wait_until(seen, timeout=timeout, what=what, detail=self.log)

    def _signal(self, sig: int) -> None:
        try:
            if self.whole_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:  # it exited between the poll and the signal
            pass

    def stop(self, sig: int = signal.SIGTERM, kill_wait: float = 5) -> int:
        if self.proc.poll() is None:
            self._signal(sig)
            try:
                self.proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(kill_wait)
        self._log.close()
        return self.proc.returncode
