"""Where the local chat's lines come from: a terminal with line editing, or plain lines.

On a terminal (stdin and stdout both ttys) the prompt is prompt_toolkit's: line editing, a
history kept in the data folder, replies printed above the input line (`patch_stdout`) while
commands run, and each running command's progress as one line above the prompt, updated in
place. Anywhere else (tests, pipes, a file) lines are read as they come, on a daemon thread: a
read blocked on stdin never holds up the exit.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, TextIO

from engine.datadir import create_file, make_dir

PROMPT = "clipbot> "


class PlainLines:
    """Lines from a pipe or file, in order; commands run one after the other, as in a script."""

    concurrent = False

    def __init__(self, stdin: TextIO, out: TextIO) -> None:
        self.out = out
        self._prompt = stdin.isatty()  # typed at a terminal whose output goes elsewhere
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def read() -> None:
            for line in _lines_of(stdin):
                loop.call_soon_threadsafe(self._lines.put_nowait, line)
            loop.call_soon_threadsafe(self._lines.put_nowait, "")

        threading.Thread(target=read, name="clipbot-stdin", daemon=True).start()

    async def read_line(self) -> str | None:
        """The next line; None at the end of input."""
        if self._prompt:
            self.out.write(PROMPT)
            self.out.flush()
        return await self._lines.get() or None

    def show_progress(self, key: object, line: str) -> bool:
        return False  # no place to update: the caller prints the line

    def end_progress(self, key: object) -> None:
        pass


class TerminalLines:
    """prompt_toolkit's prompt; commands run concurrently while the next one is typed.

    Ctrl-C at the prompt calls `on_interrupt` (the prompt stays); Ctrl-D ends the input."""

    concurrent = True

    def __init__(self, history: Path, on_interrupt: Callable[[], None], out: TextIO) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        self.out = out
        self._on_interrupt = on_interrupt
        self._progress: dict[object, str] = {}  # running command -> its progress line, oldest first
        self._session: PromptSession = PromptSession(self._message, history=FileHistory(str(history)))

    async def read_line(self) -> str | None:
        """The next line typed; None at Ctrl-D."""
        while True:
            try:
                # SIGINT stays the chat's (a signal handler on the loop); the Ctrl-C key comes here.
                return await self._session.prompt_async(handle_sigint=False)
            except KeyboardInterrupt:
                self._on_interrupt()
            except EOFError:
                return None

    def show_progress(self, key: object, line: str) -> bool:
        """Show `key`'s progress as `line` above the prompt, replacing its last one (thread-safe)."""
        self._progress[key] = line
        self._session.app.invalidate()
        return True

    def end_progress(self, key: object) -> None:
        if self._progress.pop(key, None) is not None:
            self._session.app.invalidate()

    def _message(self) -> str:
        return "".join(f"{line}\n" for line in list(self._progress.values())) + PROMPT


@contextlib.contextmanager
def open_lines(stdin: TextIO, out: TextIO, *, data_dir: Path,
               on_interrupt: Callable[[], None]) -> Iterator[PlainLines | TerminalLines]:
    """The terminal's prompt when `stdin` and `out` are both the terminal, else plain lines.
    While it is open, `lines.out` is where the chat prints (above the prompt, on a terminal)."""
    if not (stdin.isatty() and out.isatty()):
        yield PlainLines(stdin, out)
        return
    from prompt_toolkit.patch_stdout import patch_stdout

    with patch_stdout():
        yield TerminalLines(_history_file(data_dir), on_interrupt, out=sys.stdout)


def _lines_of(stdin: TextIO) -> Iterator[str]:
    """`stdin`'s lines. A real file is read with os.read, past Python's buffered reader: a
    thread blocked inside that reader at exit would hold its lock, and the interpreter aborts
    when it cannot take it ("could not acquire lock ... at interpreter shutdown")."""
    try:
        fd = stdin.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO and the like
        yield from iter(stdin.readline, "")
        return
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := os.read(fd, 65536):
        pending += decoder.decode(chunk)
        *complete, pending = pending.split("\n")
        yield from (line + "\n" for line in complete)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending


def _history_file(data_dir: Path) -> Path:
    """The typed lines are private, as everything in the data folder is (engine.datadir)."""
    return create_file(make_dir(Path(data_dir) / "local") / "chat-history")
