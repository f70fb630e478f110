"""engine.checkpoints: the latest state per job, replaced atomically, gone on delete or expiry."""

from engine.blobs import MemoryBlobStore
from engine.checkpoints import Checkpoints
from engine.store import SqliteStore


def test_save_replaces_load_returns_the_latest_and_delete_frees_the_blob():
    blobs, store = MemoryBlobStore(), SqliteStore(":memory:")
    checkpoints = Checkpoints(blobs, store, ttl=60)
    assert checkpoints.load("job") is None and checkpoints.meta("job") is None
    checkpoints.save("job", b"first", step=10)
    first_key = store.get("clipbot:checkpoint:job")["blob"]
    checkpoints.save("job", b"second", step=20)
    assert checkpoints.load("job") == b"second" and checkpoints.meta("job") == {"step": 20}
    assert first_key not in blobs._items  # the replaced checkpoint's bytes are gone
    assert checkpoints.load("other") is None  # keyed by job id
    checkpoints.delete("job")
    assert checkpoints.load("job") is None and not blobs._items


def test_a_checkpoint_whose_bytes_expired_reads_as_none():
    blobs, store = MemoryBlobStore(), SqliteStore(":memory:")
    checkpoints = Checkpoints(blobs, store, ttl=60)
    checkpoints.save("job", b"state", step=3)
    blobs.delete(store.get("clipbot:checkpoint:job")["blob"])
    assert checkpoints.load("job") is None
