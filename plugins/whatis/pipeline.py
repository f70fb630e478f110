"""Zero-shot classification as in the CLIP paper, as pure functions of a loaded model.

Each label becomes one prompt per template; the prompts' normalised text embeddings are
averaged and renormalised into one column per label (prompt ensembling). Probabilities are
softmax(logit_scale · cosine(image, label)). Label matrices are cached in memory and on disk
per (model, labels, templates): for ImageNet-1k that is 80,000 prompts, minutes on a CPU.

Taught labels (`/labels teach`) score α·(text cosine) + (1−α)·(their examples' score on the
text scale), α the text weight (CLIPBOT_WHATIS_TEACH_TEXT_WEIGHT): see `scores`. Their heat maps
use the prototype column normalise(α·t + (1−α)·m), m the normalised mean of the examples. Honest unknowns: each label's cosines on a fixed seeded
set of random pictures (the background) give its mean and spread; an answer whose best label is
not `margin` spreads above its background mean, or whose probability is under the threshold, is
unsure.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from engine.models import matrix_cache, saliency
from engine.models.clip import PROMPT_TEMPLATES, ClipModel
from plugins.whatis.results import Classification, Scored

Template = Callable[[str], str]
Progress = Callable[[int, int], object]  # (prompts encoded, prompts in all)

_memory = matrix_cache.memory  # this process's matrices (tests clear it to play a fresh worker)
prune_cache = matrix_cache.prune_cache  # the label cache's pruning, for callers
BACKGROUND_SEED = 19
BACKGROUND_PICTURES = 24


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
             cache_bytes: int | None = None, progress: Progress | None = None,
             examples: dict[str, torch.Tensor] | None = None, text_weight: float = 0.5,
             threshold: float = 0.0, margin: float | None = None) -> Classification:
    """Classify one RGB PIL image; returns the `top` labels, best first (`cache_dir` also keeps
    the background's embeddings). `examples`: image
    embeddings [k, D] of taught labels (see the module docstring); `threshold` and `margin`:
    when the answer is unsure (`is_unsure`; margin None: the probability alone decides)."""
    text = label_matrix(clip, labels, templates, cache_dir, cache_bytes=cache_bytes, progress=progress)
    shots = {i: examples[label] for i, label in enumerate(labels) if examples and label in examples}
    features = clip.encode_images([image])
    background = background_features(clip, cache_dir) if shots or margin is not None else None
    cosines, background_cosines = scores(features, text, shots, background, text_weight)
    probs = (clip.logit_scale * cosines).softmax(dim=-1)[0].cpu()
    top_scores, indices = probs.topk(min(top, len(labels)))
    best = int(indices[0])
    unsure = float(top_scores[0]) < threshold or (
        margin is not None and is_unsure(float(cosines[0, best]), background_cosines[:, best], margin))
    return Classification(
        model=clip.spec,
        labels=tuple(Scored(labels[i], round(float(s), 6)) for s, i in zip(top_scores, indices.tolist())),
        meaningless=bool(clip.meaningless), unsure=unsure, taught=tuple(labels[i] for i in sorted(shots)),
    )


def scores(features: torch.Tensor, text: torch.Tensor, shots: dict[int, torch.Tensor],
           background: torch.Tensor | None, text_weight: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each label's score (a cosine, or for a taught label a mix on the cosine scale) for [N, D]
    features, and the same for the background pictures (None without them).

    Text labels score their plain cosine, so a zero-shot answer is exactly CLIP's. A taught
    label (`shots`: column → example embeddings [k, D]) scores α·(its text cosine) + (1−α)·(its
    examples' score). Pictures sit much closer to other pictures than to any text (CLIP's
    modality gap), so the examples' score is put on the text scale: the cosine between the
    picture and the examples' mean, both less the background's mean embedding, counted in
    background spreads above the background's own, then applied to the mean and spread of the
    text labels' background cosines."""
    device = features.device
    text = text.to(device).float()
    cosines = features.float() @ text
    if background is None:
        return cosines, None
    background = background.to(device).float()
    plain = background @ text
    if not shots:
        return cosines, plain
    centre = background.mean(dim=0)
    scale_mean, scale_spread = plain.mean(), plain.std()
    picture = torch.nn.functional.normalize(features.float() - centre, dim=-1)
    nothing = torch.nn.functional.normalize(background - centre, dim=-1)
    mixed, mixed_bg = cosines.clone(), plain.clone()
    for column, examples in shots.items():
        prototype = torch.nn.functional.normalize(examples.to(device).float(), dim=-1).mean(dim=0) - centre
        prototype = prototype / prototype.norm().clamp_min(1e-12)
        near, far = picture @ prototype, nothing @ prototype
        spread = far.std().clamp_min(1e-6)
        image_score = scale_mean + (near - far.mean()) / spread * scale_spread
        image_bg = scale_mean + (far - far.mean()) / spread * scale_spread
        mixed[:, column] = text_weight * cosines[:, column] + (1 - text_weight) * image_score
        mixed_bg[:, column] = text_weight * plain[:, column] + (1 - text_weight) * image_bg
    return mixed, mixed_bg


def scoring_matrix(clip: ClipModel, labels: Sequence[str], templates: Sequence[Template] = PROMPT_TEMPLATES,
                   cache_dir: Path | None = None, *, cache_bytes: int | None = None, progress: Progress | None = None,
                   examples: dict[str, torch.Tensor] | None = None, text_weight: float = 0.5) -> torch.Tensor:
    """The cached text label matrix with taught labels' columns replaced by their prototypes
    (what Where? heat maps compare patches with)."""
    matrix = label_matrix(clip, labels, templates, cache_dir, cache_bytes=cache_bytes, progress=progress)
    return with_prototypes(matrix, labels, examples or {}, text_weight)


def with_prototypes(matrix: torch.Tensor, labels: Sequence[str], examples: dict[str, torch.Tensor],
                    text_weight: float) -> torch.Tensor:
    """A copy of the [D, L] text matrix where each label with image examples ([k, D]) has the
    column normalise(α·t + (1−α)·normalise(mean of the normalised examples))."""
    if not examples:
        return matrix
    mixed = matrix.clone()
    for column, label in enumerate(labels):
        shots = examples.get(label)
        if shots is None or not len(shots):
            continue
        mean = torch.nn.functional.normalize(shots.float(), dim=-1).mean(dim=0)
        prototype = text_weight * matrix[:, column] + (1 - text_weight) * mean / mean.norm()
        mixed[:, column] = prototype / prototype.norm()
    return mixed


def is_unsure(cosine: float, background: torch.Tensor, margin: float) -> bool:
    """Whether a label's cosine with the picture is under its background mean + `margin` × its
    background spread (the label fits this picture no better than pictures of nothing)."""
    return cosine < float(background.mean() + margin * background.std())


def background_pictures(side: int, count: int = BACKGROUND_PICTURES, seed: int = BACKGROUND_SEED) -> list[Image.Image]:
    """A fixed, seeded set of pictures of nothing: noise, blotches and colour washes at `side` pixels."""
    rng = np.random.default_rng(seed)
    pictures = []
    for i in range(count):
        kind = i % 3
        if kind == 0:  # pixel noise
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        elif kind == 1:  # blotches: coarse noise scaled up
            coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC))
        else:  # a wash between two colours
            a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = np.linspace(0, 1, side)[None, :, None]
            pixels = np.broadcast_to(a * (1 - t) + b * t, (side, side, 3)).astype(np.uint8)
        pictures.append(Image.fromarray(np.ascontiguousarray(pixels), "RGB"))
    return pictures


def background_features(clip: ClipModel, cache_dir: Path | None = None) -> torch.Tensor:
    """The background pictures' image embeddings [B, D], computed once per model: kept in memory
    and, given `cache_dir`, on disk beside the label matrices (seconds on a CPU)."""
    key = hashlib.sha256(json.dumps(["background", clip.fingerprint, BACKGROUND_SEED,
                                     BACKGROUND_PICTURES]).encode()).hexdigest()
    # at twice the model's input side: resized by the preprocess as photos are
    return matrix_cache.cached_matrix(
        key, lambda: clip.encode_images(background_pictures(2 * clip.image_size)), cache_dir)


def explain(clip: ClipModel, image: Image.Image, matrix: torch.Tensor, labels: Sequence[str],
            shown: Sequence[str]) -> tuple[str, list[tuple[str, Image.Image]]]:
    """(method, [(label, overlay picture)]) for the labels `shown`, each map scored against all
    of `labels` (the columns of `matrix`) and stretched to 0..1 for display (its coldest patch
    clear, its hottest full)."""
    found = saliency.explain(clip, image, matrix)
    out = []
    for label in shown:
        heat = found.maps[list(labels).index(label)]
        low, high = heat.min(), heat.max()
        out.append((label, saliency.overlay(image, (heat - low) / (high - low).clamp_min(1e-12))))
    return found.method, out


def encode_vector(vector: torch.Tensor) -> str:
    """A unit vector as base64 float16 (what a label set stores for a taught example)."""
    return base64.b64encode(vector.float().numpy().astype("<f2").tobytes()).decode("ascii")


def decode_vector(text: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype="<f2").astype(np.float32))
