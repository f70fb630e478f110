"""Job checkpoints: the state a task needs to resume, keyed by job id, kept with a TTL.

The bytes live in the blob store; a small store entry names the latest blob (and what the task
said about it, e.g. the step). A new checkpoint is written before the old one is deleted, so a
worker killed at any moment leaves a complete checkpoint behind. Tasks use it through
`JobContext.save_checkpoint` / `load_checkpoint`; a redelivered job finds its predecessor's.
"""

from __future__ import annotations

import time
from typing import Any

from engine.blobs import BlobMissing, BlobStore
from engine.store import Store

_KEY = "clipbot:checkpoint:"


class Checkpoints:
    def __init__(self, blobs: BlobStore, store: Store, ttl: int) -> None:
        self._blobs = blobs
        self._store = store
        self._ttl = ttl

    def save(self, job_id: str, data: bytes, **meta: Any) -> None:
        """Replace the job's checkpoint with `data`; `meta` is small JSON (e.g. step=40)."""
        previous = self._store.get(_KEY + job_id)
        key = self._blobs.put(data, ttl=self._ttl)
        self._store.set(_KEY + job_id, {"blob": key, "at": time.time(), "meta": meta}, ttl=self._ttl)
        if previous:
            self._blobs.delete(previous["blob"])

    def load(self, job_id: str) -> bytes | None:
        """The job's latest checkpoint, or None (never saved, expired, or deleted)."""
        entry = self._store.get(_KEY + job_id)
        if not entry:
            return None
        try:
            return self._blobs.get(entry["blob"])
        except BlobMissing:
            return None

    def meta(self, job_id: str) -> dict[str, Any] | None:
        """What the task said about its latest checkpoint, or None."""
        entry = self._store.get(_KEY + job_id)
        return entry["meta"] if entry else None

    def delete(self, job_id: str) -> None:
        """Forget the job's checkpoint (it ended: done, failed or cancelled); nothing if it has none."""
        entry = self._store.get(_KEY + job_id)
        if entry:
            self._blobs.delete(entry["blob"])
            self._store.delete(_KEY + job_id)


def checkpoints_for(engine: Any) -> Checkpoints:
    """The checkpoints of an engine (its blob store and shared state store, blob TTL): the ones
    its job book deletes as a job ends."""
    return engine.book.checkpoints or Checkpoints(engine.blobs, engine.store, int(engine.settings.blob_ttl))
