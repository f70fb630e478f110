"""The local chat's conversation: lines read and answered, side by side, and Ctrl-C.

On a terminal commands run concurrently: while `/imagine` draws, `/cancel` (or anything else)
can be typed and answers at once, its lines printed above the prompt. Piped input runs its
lines in turn, as a script does. The first Ctrl-C cancels the commands running (and says so);
a second in a row leaves, with KeyboardInterrupt once everything is cleaned up, so `clipbot run`
exits 130 as an interrupted program does. At the end of piped input the commands still
answering (jobs resumed from last time) are waited for; /quit (and Ctrl-D on a terminal) leaves
long jobs running on the workers, to be followed again next time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Awaitable, Iterator, TextIO

from bot.adapters.local.chat import LocalAdapter
from bot.adapters.local.model_line import model_line
from bot.adapters.local.terminal import open_lines

BANNER = "clipbot local chat. /help lists commands, /quit leaves."
log = logging.getLogger(__name__)


class ChatSession:
    """One run of the local chat, from its banner to leaving."""

    def __init__(self, chat: LocalAdapter) -> None:
        self.chat = chat
        self._commands: set[asyncio.Task] = set()  # started here (typed, resumed), until they end
        self._interrupts = 0  # Ctrl-C presses since the last line typed
        self._leave = asyncio.Event()  # a second Ctrl-C

    async def run(self, stdin: TextIO) -> None:
        """Greet, resume last time's jobs, then read and answer `stdin` until it ends."""
        chat = self.chat
        chat.print_line(BANNER)
        chat.print_line(await asyncio.to_thread(model_line, chat.dispatcher.settings))
        with self._sigint_handled():
            self._track(await chat.resume())
            with open_lines(stdin, chat.out, data_dir=chat.dispatcher.settings.data_dir,
                            on_interrupt=self.interrupt) as lines:
                await self._converse(lines)
        if self._leave.is_set():
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def _sigint_handled(self) -> Iterator[None]:
        """SIGINT calls `interrupt` (on the loop) while the chat runs; where a handler cannot be
        set (not the main thread), Ctrl-C stays Python's KeyboardInterrupt."""
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self.interrupt)
        except (RuntimeError, ValueError):
            yield
            return
        try:
            yield
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _converse(self, lines: Any) -> None:
        chat, out = self.chat, self.chat.out
        chat.lines, chat.out = lines, lines.out
        try:
            ended_by = await self._read(lines)
            self._take_reconnected()
            if ended_by == "eof":
                await self._unless_leaving(asyncio.gather(*self._commands, return_exceptions=True))
        finally:
            await self._stop_commands()
            chat.lines, chat.out = None, out

    async def _read(self, lines: Any) -> str:
        """Read and start commands until "eof", "quit" or "leave" (a second Ctrl-C)."""
        while True:
            line = await self._unless_leaving(lines.read_line())
            if self._leave.is_set():
                return "leave"
            if line is None:
                return "quit" if lines.concurrent else "eof"  # Ctrl-D at a terminal is /quit
            if line.strip() in ("/quit", "/exit"):
                return "quit"
            if not line.strip():
                continue
            self._interrupts = 0
            command = self._track([asyncio.create_task(self.chat.handle_line(line))])
            if not lines.concurrent:
                await self._unless_leaving(asyncio.wait(command))

    def interrupt(self) -> None:
        """Ctrl-C: the first cancels the commands running and says so; a second in a row leaves."""
        self._interrupts += 1
        running = dict(self.chat.running)
        if self._interrupts > 1:
            self.chat.print_line("(Ctrl-C again: leaving)")
            self._leave.set()
        elif not running:
            self.chat.print_line("(nothing is running; Ctrl-C again or /quit leaves)")
        else:
            self.chat.print_line(f"(Ctrl-C: cancelling {len(running)} running command{'s' * (len(running) > 1)};"
                                 " Ctrl-C again leaves)")
            for task, stream in running.items():
                if stream.jobs:  # a long job: ask it to stop, and its stream says when it has
                    self._track([asyncio.create_task(self.chat.handle_line(f"/cancel job: {job}"))
                                 for job in sorted(stream.jobs)])
                else:  # a quick one: stop waiting for it
                    task.cancel()

    def _track(self, tasks: list[asyncio.Task]) -> list[asyncio.Task]:
        for task in tasks:
            self._commands.add(task)
            task.add_done_callback(self._ended)
        return tasks

    def _ended(self, task: asyncio.Task) -> None:
        self._commands.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a command failed in the local chat", exc_info=task.exception())
            self.chat.print_line(f"error: {type(task.exception()).__name__}: {task.exception()}")

    def _take_reconnected(self) -> None:
        """Redis was down at start: follow the jobs found once it came back; stop trying if not."""
        reconnecting = self.chat.reconnecting
        if reconnecting is None:
            return
        if reconnecting.done() and not reconnecting.cancelled() and not reconnecting.exception():
            self._track(reconnecting.result())
        else:
            reconnecting.cancel()

    async def _stop_commands(self) -> None:
        """Stop following what still runs (a long job's entry stays: the next start resumes it)."""
        for task in list(self._commands):
            task.cancel()
        await asyncio.gather(*self._commands, return_exceptions=True)

    async def _unless_leaving(self, awaitable: Awaitable) -> Any:
        """`awaitable`'s result; None (and `awaitable` cancelled) once a second Ctrl-C asks to leave."""
        work = asyncio.ensure_future(awaitable)
        leave = asyncio.ensure_future(self._leave.wait())
        try:
            await asyncio.wait({work, leave}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leave.cancel()
        if work.done():
            return work.result()
        work.cancel()
        return None
