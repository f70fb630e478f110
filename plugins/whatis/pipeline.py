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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from engine.models.clip import PROMPT_TEMPLATES

Template = Callable[[str], str]

_MEMORY_SLOTS = 8
_memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()
_lock = threading.Lock()


def _cache_key(clip: Any, labels: Sequence[str], templates: Sequence[Template]) -> str:
    payload = json.dumps([clip.fingerprint, list(labels), [t("{}") for t in templates]])
    return hashlib.sha256(payload.encode()).hexdigest()


def encode_labels(clip: Any, labels: Sequence[str], templates: Sequence[Template]) -> torch.Tensor:
    """[D, L] matrix of ensembled, normalised label embeddings (no caching)."""
    texts = [template(label) for label in labels for template in templates]
    embeddings = clip.encode_texts(texts).reshape(len(labels), len(templates), -1).mean(dim=1)
    return (embeddings / embeddings.norm(dim=-1, keepdim=True)).T.contiguous()


def label_matrix(clip: Any, labels: Sequence[str], templates: Sequence[Template] = PROMPT_TEMPLATES,
                 cache_dir: Path | None = None) -> torch.Tensor:
    """`encode_labels`, cached in memory (LRU) and, given `cache_dir`, on disk."""
    key = _cache_key(clip, labels, templates)
    with _lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    matrix = _load_cached(cache_dir, key) if cache_dir else None
    if matrix is None:
        matrix = encode_labels(clip, labels, templates)
        if cache_dir:
            _save_cached(cache_dir, key, matrix)
    with _lock:
        _memory[key] = matrix
        while len(_memory) > _MEMORY_SLOTS:
            _memory.popitem(last=False)
    return matrix


def _load_cached(cache_dir: Path, key: str) -> torch.Tensor | None:
    path = Path(cache_dir) / f"{key}.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, torn or stale: recompute (and overwrite) it
        return None


def _save_cached(cache_dir: Path, key: str, matrix: torch.Tensor) -> None:
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".{key}.{os.getpid()}.tmp"
    torch.save(matrix.cpu(), tmp)
    os.replace(tmp, cache_dir / f"{key}.pt")  # atomic: concurrent workers never read half a file


def probabilities(clip: Any, image_features: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """softmax(logit_scale · cosine) for normalised [N, D] features against a [D, L] matrix."""
    logits = clip.logit_scale * image_features.float() @ matrix.to(image_features.device).float()
    return logits.softmax(dim=-1)


def classify(clip: Any, image: Any, labels: Sequence[str], *, top: int,
             templates: Sequence[Template] = PROMPT_TEMPLATES, cache_dir: Path | None = None) -> dict:
    """Classify one RGB PIL image; returns the `top` labels, best first."""
    matrix = label_matrix(clip, labels, templates, cache_dir)
    probs = probabilities(clip, clip.encode_images([image]), matrix)[0].cpu()
    scores, indices = probs.topk(min(top, len(labels)))
    return {
        "model": clip.spec,
        "labels": [{"label": labels[i], "score": round(float(s), 6)} for s, i in zip(scores, indices.tolist())],
        "meaningless": bool(clip.meaningless),
    }
