"""A test harness for plugin authors (errbot's TestBot is the model).

    from bot.testing import TestBot

    def test_shout():
        with TestBot(extra_plugins=["clipbot_hello"]) as bot:
            reply = bot.ask("/shout hello")
            assert reply.text == "HELLO!" and not reply.error

`TestBot` builds a real clipbot through the composition root: your plugin next to the ones
you choose, the embedded engine with its worker thread (your tasks really run), the tiny
seeded `tiny-test` CLIP on the CPU, and a throwaway data folder. Commands go through the
local chat's parser and the same dispatch as Discord and Slack.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from pathlib import Path
from typing import Any, Iterable

from bot.commands import Reply

__all__ = ["TestBot"]


class TestBot:
    __test__ = False  # not a pytest test class

    def __init__(self, *, plugins: Iterable[str] = ("*",), extra_plugins: Iterable[str] = (),
                 channel_id: str = "test-channel", user_id: str = "test-user", is_admin: bool = True,
                 data_dir: str | Path | None = None, **settings: Any) -> None:
        self._settings_overrides = {
            "plugins": list(plugins), "extra_plugins": list(extra_plugins), "clip_model": "tiny-test",
            "device": "cpu", **settings,
        }
        self._data_dir = data_dir
        self._identity = {"channel_id": channel_id, "user_id": user_id, "is_admin": is_admin}
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._context: Any = None
        self.app: Any = None
        self.output = io.StringIO()  # what the local chat printed

    def start(self) -> "TestBot":
        from bot.adapters.local import LocalAdapter
        from bot.app import open_app
        from bot.config import Settings

        if self._data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clipbot-test-")
            self._data_dir = self._tmp.name
        settings = Settings(_env_file=None, data_dir=Path(self._data_dir), **self._settings_overrides)
        self._context = open_app(settings)
        self.app = self._context.__enter__()
        self.chat = LocalAdapter(self.app, out=self.output, output_dir=Path(self._data_dir) / "output",
                                 **self._identity)
        return self

    def stop(self) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "TestBot":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def send(self, line: str) -> list[Reply]:
        """Type `line` in the local chat; every reply, in order (the last one is final)."""
        if self.app is None:
            raise RuntimeError("start the TestBot first (use it as a context manager)")
        return asyncio.run(self.chat.handle_line(line))

    def ask(self, line: str) -> Reply:
        """Type `line`; the final reply."""
        return self.send(line)[-1]
