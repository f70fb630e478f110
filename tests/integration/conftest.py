"""Fixtures for tests that need Redis beyond the machine's shared one: a private redis-server
that a test may stop and start again (with AOF, so its data survives the restart)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.polling import wait_until

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OwnRedis:
    """`redis-server --appendonly yes` on a spare port, with its files in a temp dir."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--dir", str(self.dir), "--save", "", "--logfile", str(self.dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        def answers() -> bool:
            try:
                return redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
            except redis.RedisError:
                return False

        wait_until(answers, timeout=10, what=f"redis-server to start on port {self.port}")

    def stop(self) -> None:
        """SIGTERM: Redis flushes the AOF and exits, as in an ordinary restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.fail("this test needs redis-server on PATH")
    server = OwnRedis(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    yield server
    server.stop()
