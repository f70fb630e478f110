"""Cached embedding matrices (text embeddings of a label set or a vocabulary), shared by plugins.

A matrix is named by a key its caller derives from everything it depends on (the model's
fingerprint, the texts, the templates). It is kept in memory (LRU) and, given a folder, on disk
(LRU by mtime, bounded in bytes). Processes sharing the folder compute a matrix once: the
others wait on its lock file, and may be cancelled meanwhile through `waiting`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch

from engine.datadir import create_file, make_dir

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, concurrent workers may compute a matrix twice
    fcntl = None  # type: ignore[assignment]

_MEMORY_SLOTS = 8
_WAIT_POLL_S = 0.5
memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()  # this process's matrices, least recent first
_lock = threading.Lock()


def cached_matrix(key: str, compute: Callable[[], torch.Tensor], cache_dir: Path | None = None, *,
                  cache_bytes: int | None = None, waiting: Callable[[], object] = lambda: None) -> torch.Tensor:
    """The matrix under `key`: from memory, else from `cache_dir`, else `compute()` (then stored
    in both; the disk cache pruned to `cache_bytes` when given). `waiting()` is called every half
    second while another process computes the same matrix."""
    with _lock:
        matrix = memory.get(key)
        if matrix is not None:
            memory.move_to_end(key)
    if matrix is not None:
        if cache_dir:
            _touch(Path(cache_dir) / f"{key}.pt")  # in use here: other processes' pruning keeps it
        return matrix
    matrix = _disk_cached(Path(cache_dir), key, cache_bytes, compute, waiting) if cache_dir else compute()
    with _lock:
        memory[key] = matrix
        while len(memory) > _MEMORY_SLOTS:
            memory.popitem(last=False)
    return matrix


def _disk_cached(cache_dir: Path, key: str, cache_bytes: int | None, compute: Callable[[], torch.Tensor],
                 waiting: Callable[[], object]) -> torch.Tensor:
    matrix = _load_cached(cache_dir, key)
    if matrix is not None:
        return matrix
    make_dir(cache_dir)
    with _computing(cache_dir, key, waiting):
        matrix = _load_cached(cache_dir, key)  # another process may have finished it meanwhile
        if matrix is None:
            matrix = compute()
            _save_cached(cache_dir, key, matrix)
            if cache_bytes is not None:
                prune_cache(cache_dir, cache_bytes, keep=key)
    return matrix


@contextmanager
def _computing(cache_dir: Path, key: str, waiting: Callable[[], object]) -> Iterator[None]:
    """Hold `key`'s lock file: one process (or thread) computes a matrix, the others wait for it,
    calling `waiting()` every half second (a job reports it, and may be cancelled meanwhile)."""
    with open(create_file(cache_dir / f".{key}.lock"), "a+b") as lock:
        while fcntl is not None:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waiting()
                time.sleep(_WAIT_POLL_S)
        yield  # the lock goes with the file's closing


def _load_cached(cache_dir: Path, key: str) -> torch.Tensor | None:
    path = Path(cache_dir) / f"{key}.pt"
    try:
        matrix = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, torn or stale: recompute (and overwrite) it
        return None
    _touch(path)
    return matrix


def _touch(path: Path) -> None:
    """Mark a cached matrix as just used: its mtime orders the LRU pruning."""
    try:
        os.utime(path)
    except OSError:  # pruned by another process meanwhile: it will be recomputed when needed
        pass


def _save_cached(cache_dir: Path, key: str, matrix: torch.Tensor) -> None:
    tmp = cache_dir / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
    torch.save(matrix.cpu(), create_file(tmp))
    os.replace(tmp, cache_dir / f"{key}.pt")  # atomic: concurrent workers never read half a file


def prune_cache(cache_dir: Path, max_bytes: int, *, keep: str = "") -> int:
    """Delete the least recently used matrices until the cache holds at most `max_bytes`
    (the matrix `keep` stays whatever its size). Returns the bytes freed."""
    entries = []
    for path in Path(cache_dir).glob("*.pt"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # another process pruned it
            continue
        entries.append((stat.st_mtime_ns, stat.st_size, path))
    total = sum(size for _, size, _ in entries)
    freed = 0
    for _, size, path in sorted(entries):
        if total - freed <= max_bytes:
            break
        if path.stem == keep:
            continue
        path.unlink(missing_ok=True)
        (path.parent / f".{path.stem}.lock").unlink(missing_ok=True)
        freed += size
    return freed
