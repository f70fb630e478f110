"""Zero-shot classification as in the CLIP paper, as pure functions of a loaded model.

Each label becomes one prompt per template; the prompts' normalised text embeddings are
averaged and renormalised into one column per label (prompt ensembling). Probabilities are
softmax(logit_scale · cosine(image, label)). Label matrices are cached in memory and on disk
per (model, labels, templates): for ImageNet-1k that is 80,000 prompts, minutes on a CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image

from engine.datadir import create_file, make_dir
from engine.models.clip import PROMPT_TEMPLATES, ClipModel
from plugins.whatis.results import Classification, Scored

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process lock, concurrent workers may compute a matrix twice
    fcntl = None  # type: ignore[assignment]

Template = Callable[[str], str]
Progress = Callable[[int, int], object]  # (prompts encoded, prompts in all)

_MEMORY_SLOTS = 8
_WAIT_POLL_S = 0.5
_memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_lock = threading.Lock()


def _cache_key(clip: ClipModel, labels: Sequence[str], templates: Sequence[Template]) -> str:
    payload = json.dumps([clip.fingerprint, list(labels), [t("{}") for t in templates]])
    return hashlib.sha256(payload.encode()).hexdigest()


def encode_labels(clip: ClipModel, labels: Sequence[str], templates: Sequence[Template],
                  progress: Progress | None = None) -> torch.Tensor:
    """[D, L] matrix of ensembled, normalised label embeddings (no caching).
    `progress(done, total)` counts prompts encoded."""
    texts = [template(label) for label in labels for template in templates]
    encoded = clip.encode_texts(texts, progress=progress)
    embeddings = encoded.reshape(len(labels), len(templates), -1).mean(dim=1)
    return (embeddings / embeddings.norm(dim=-1, keepdim=True)).T.contiguous()


def label_matrix(clip: ClipModel, labels: Sequence[str], templates: Sequence[Template] = PROMPT_TEMPLATES,
                 cache_dir: Path | None = None, *, cache_bytes: int | None = None,
                 progress: Progress | None = None) -> torch.Tensor:
    """`encode_labels`, cached in memory (LRU) and, given `cache_dir`, on disk (LRU, at most
    `cache_bytes` of matrices when given). Processes sharing `cache_dir` compute a matrix once:
    the others wait for it (reported as progress 0)."""
    key = _cache_key(clip, labels, templates)
    with _lock:
        matrix = _memory.get(key)
        if matrix is not None:
            _memory.move_to_end(key)
    if matrix is not None:
        if cache_dir:
            _touch(Path(cache_dir) / f"{key}.pt")  # in use here: other processes' pruning keeps it
        return matrix
    if cache_dir:
        matrix = _disk_cached(Path(cache_dir), key, cache_bytes,
                              lambda: encode_labels(clip, labels, templates, progress),
                              lambda: progress and progress(0, len(labels) * len(templates)))
    else:
        matrix = encode_labels(clip, labels, templates, progress)
    with _lock:
        _memory[key] = matrix
        while len(_memory) > _MEMORY_SLOTS:
            _memory.popitem(last=False)
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


def probabilities(clip: ClipModel, image_features: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """softmax(logit_scale · cosine) for normalised [N, D] features against a [D, L] matrix."""
    logits = clip.logit_scale * image_features.float() @ matrix.to(image_features.device).float()
    return logits.softmax(dim=-1)


def classify(clip: ClipModel, image: Image.Image, labels: Sequence[str], *, top: int,
             templates: Sequence[Template] = PROMPT_TEMPLATES, cache_dir: Path | None = None,
             cache_bytes: int | None = None, progress: Progress | None = None) -> Classification:
    """Classify one RGB PIL image; returns the `top` labels, best first."""
    matrix = label_matrix(clip, labels, templates, cache_dir, cache_bytes=cache_bytes, progress=progress)
    probs = probabilities(clip, clip.encode_images([image]), matrix)[0].cpu()
    scores, indices = probs.topk(min(top, len(labels)))
    return Classification(
        model=clip.spec,
        labels=tuple(Scored(labels[i], round(float(s), 6)) for s, i in zip(scores, indices.tolist())),
        meaningless=bool(clip.meaningless),
    )
