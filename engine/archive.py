"""Finished jobs of the embedded engine, kept across restarts under the data dir.

The embedded engine runs its jobs in memory (a restart loses the queue, and with it any job in
flight), but a finished job's record, and the blobs its result names (an /imagine picture and its
end state), are kept for `CLIPBOT_JOB_TTL` seconds: a later `clipbot imagine --from-job ID`, or a
button clicked after the local chat restarted, builds on it as with Redis. Records go to the
state store (SQLite), blobs to files (`DATA_DIR/results/KEY`, 0600, expiring by their mtime).

A result names its blobs by key: `named_blobs` finds them (blob keys are uuid4 hex strings,
`engine.blobs`), so the archive needs no knowledge of any task's result shape.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from engine.blobs import BlobMissing, MemoryBlobStore
from engine.datadir import make_dir, write_file
from engine.store import Store

__all__ = ["ArchivedBlobs", "JobArchive", "named_blobs"]

_RECORD = "clipbot:finished-job:"
_KEY = re.compile(r"[0-9a-f]{32}")
_SWEEP_EVERY = 60.0
log = logging.getLogger(__name__)


def named_blobs(value: Any) -> Iterator[str]:
    """Every string in a JSON value that has the shape of a blob key."""
    if isinstance(value, str):
        if _KEY.fullmatch(value):
            yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from named_blobs(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from named_blobs(item)


class JobArchive:
    """Finished job records (JSON, in `store`) and the blobs their results name (files in `folder`)."""

    def __init__(self, store: Store, folder: Path, ttl: int) -> None:
        self.store = store
        self.folder = folder
        self.ttl = max(1, int(ttl))
        self._next_sweep = 0.0

    def keep(self, record: dict[str, Any], blobs: "ArchivedBlobs") -> None:
        """Archive a finished record and move the blobs its result names (those still there) out of
        memory into files, each kept as long as the blob had left (a Where? picture its day) or the
        record's TTL, whichever is longer."""
        for key in dict.fromkeys(named_blobs(record.get("result"))):
            try:
                data, left = blobs.live.take(key)
            except BlobMissing:
                continue  # a job id, or a blob already gone: nothing to keep
            expires = time.time() + max(self.ttl, left or 0)
            write_file(make_dir(self.folder) / key, data)
            os.utime(self.folder / key, (expires, expires))  # the mtime says when it goes
        self.store.set(_RECORD + record["id"], record, ttl=self.ttl)
        self._sweep()

    def record(self, job_id: str) -> dict[str, Any] | None:
        return self.store.get(_RECORD + job_id)

    def blob(self, key: str) -> bytes:
        path = self.folder / key
        if not _KEY.fullmatch(key) or not path.is_file():
            raise BlobMissing(key)
        if path.stat().st_mtime < time.time():
            path.unlink(missing_ok=True)
            raise BlobMissing(key)
        return path.read_bytes()

    def forget(self, job_id: str) -> None:
        self.store.delete(_RECORD + job_id)

    def delete_blob(self, key: str) -> None:
        if _KEY.fullmatch(key):
            (self.folder / key).unlink(missing_ok=True)

    def _sweep(self) -> None:
        """Expired files go, at most once a minute (records expire with their store TTL)."""
        now = time.time()
        if now < self._next_sweep or not self.folder.is_dir():
            return
        self._next_sweep = now + _SWEEP_EVERY
        for path in self.folder.iterdir():
            try:
                if path.stat().st_mtime < now:
                    path.unlink()
            except FileNotFoundError:
                pass


class ArchivedBlobs:
    """A blob store whose misses fall back to the archive: live blobs in `live` (memory), a
    finished job's blobs in its archived files (moved there when it ends, so memory holds only the
    blobs of jobs in flight and uploads, and a restart keeps the rest). Deletes reach both."""

    def __init__(self, live: MemoryBlobStore, archive: JobArchive) -> None:
        self.live = live
        self.archive = archive

    def put(self, data: bytes, *, ttl: int | None = None) -> str:
        return self.live.put(data, ttl=ttl)

    def get(self, key: str) -> bytes:
        try:
            return self.live.get(key)
        except BlobMissing:
            return self.archive.blob(key)

    def delete(self, key: str) -> None:
        self.live.delete(key)
        self.archive.delete_blob(key)

    def __len__(self) -> int:
        return len(self.live)  # type: ignore[arg-type]
