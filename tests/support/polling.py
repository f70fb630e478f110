"""One poll-until for every test and fake: the condition's value, or an AssertionError that says what
was awaited (and whatever `detail` adds: a log, the calls seen). `wait_until_async` is the same for a
coroutine whose event loop must keep running while it waits."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               detail: Callable[[], str] | None = None, every: float = POLL_S) -> Any:
    """`every`: seconds between polls (longer where each poll asks a bot something)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise _timed_out(timeout, what, detail)


async def wait_until_async(predicate: Callable[[], Any], *, timeout: float, what: str,
                           detail: Callable[[], str] | None = None, every: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(every)
    raise _timed_out(timeout, what, detail)


def _timed_out(timeout: float, what: str, detail: Callable[[], str] | None) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))
