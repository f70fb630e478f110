"""One poll-until for every test and fake: the condition's value, or an AssertionError that says what
was awaited (and whatever `detail` adds: a log, the calls seen)."""

from __future__ import annotations

import time
from typing import Any, Callable

POLL_S = 0.05


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str,
               detail: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{detail()}" if detail else ""))
