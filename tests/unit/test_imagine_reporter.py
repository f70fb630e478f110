"""The engine's throttled progress (/imagine's reporter): the loop never waits for a slow event store."""

from __future__ import annotations

import threading

from engine.blobs import MemoryBlobStore
from engine.progress import ThrottledProgress


class _StuckLog:
    """An event log whose writes hang until released (a Redis that stopped answering)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.events: list[dict] = []

    def emit(self, **data):
        self.release.wait()
        self.events.append(data)


def test_a_stuck_event_store_never_blocks_the_loop_and_loses_no_snapshot():
    log, blobs = _StuckLog(), MemoryBlobStore()
    reporter = ThrottledProgress(log.emit, blobs, [])
    for step in range(1, 101):  # all of these return while the store is stuck
        if step % 25 == 0:
            reporter.snapshot(step, 100, b"png%d" % step)
        else:
            reporter.update(step, 100, loss=1.0 / step)
    assert not log.release.is_set()
    log.release.set()
    reporter.close()
    shots = [e for e in log.events if "snapshot" in e]
    assert [e["step"] for e in shots] == [25, 50, 75, 100]
    assert [blobs.get(e["snapshot"]) for e in shots] == [b"png25", b"png50", b"png75", b"png100"]
    assert len(log.events) < 100  # text-only updates were coalesced, not queued one by one
    assert [s["filename"] for s in reporter.snapshots()] == [f"step-{n:04d}.png" for n in (25, 50, 75, 100)]
