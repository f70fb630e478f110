"""Zero-shot classification as in the CLIP paper, as pure functions of a loaded model.

Each label becomes one prompt per template; the prompts' normalised text embeddings are
averaged and renormalised into one column per label (prompt ensembling). Probabilities are
softmax(logit_scale · cosine(image, label)). Label matrices are cached in memory and on disk
per (model, labels, templates): for ImageNet-1k that is 80,000 prompts, minutes on a CPU.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from engine.models import matrix_cache
from engine.models.clip import PROMPT_TEMPLATES, ClipModel
from plugins.whatis.results import Classification, Scored

Template = Callable[[str], str]
Progress = Callable[[int, int], object]  # (prompts encoded, prompts in all)

_memory = matrix_cache.memory  # this process's matrices (tests clear it to play a fresh worker)
prune_cache = matrix_cache.prune_cache  # the label cache's pruning, for callers


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
    `cache_bytes` of matrices when given) by `engine.models.matrix_cache`. Processes sharing
    `cache_dir` compute a matrix once: the others wait for it (reported as progress 0)."""
    return matrix_cache.cached_matrix(
        _cache_key(clip, labels, templates), lambda: encode_labels(clip, labels, templates, progress),
        cache_dir, cache_bytes=cache_bytes,
        waiting=lambda: progress and progress(0, len(labels) * len(templates)))


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
