"""/describe as pure functions of a loaded CLIP (heavy: torch).

Every vocabulary term is embedded as its phrase (`vocab.phrase`: "by Claude Monet" for an
artist); the picture's embedding is compared with each by cosine similarity, and terms are
ranked within their kind. The vocabulary's text matrix is cached like /whatis's label matrices
(`engine.models.matrix_cache`, keyed by the model's fingerprint and every phrase), so an admin's
new terms make a new matrix and the shipped one is computed once per model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

from engine.models import matrix_cache
from engine.models.clip import ClipModel
from plugins.describe.compose import compose
from plugins.describe.results import Description, Term
from plugins.describe.vocab import KINDS, Vocabulary, phrase

Progress = Callable[[int, int], object]  # (terms encoded, terms in all)


def _cache_key(clip: ClipModel, phrases: list[str]) -> str:
    payload = json.dumps(["describe", clip.fingerprint, phrases])
    return hashlib.sha256(payload.encode()).hexdigest()


def vocabulary_matrix(clip: ClipModel, vocabulary: Vocabulary, cache_dir: Path | None = None, *,
                      cache_bytes: int | None = None, progress: Progress | None = None) -> torch.Tensor:
    """[D, N] unit text embeddings of every term's phrase, in `vocabulary.entries()` order."""
    phrases = [phrase(kind, term) for kind, term in vocabulary.entries()]
    return matrix_cache.cached_matrix(
        _cache_key(clip, phrases), lambda: clip.encode_texts(phrases, progress=progress).T.contiguous(),
        cache_dir, cache_bytes=cache_bytes, waiting=lambda: progress and progress(0, len(phrases)))


def rank_terms(clip: ClipModel, image: Image.Image, vocabulary: Vocabulary, *, cache_dir: Path | None = None,
               cache_bytes: int | None = None, progress: Progress | None = None) -> dict[str, list[Term]]:
    """Every term of every kind scored against the picture: kind -> its terms, best first."""
    matrix = vocabulary_matrix(clip, vocabulary, cache_dir, cache_bytes=cache_bytes, progress=progress)
    cosines = (clip.encode_images([image]).float() @ matrix.float())[0].tolist()
    ranked: dict[str, list[Term]] = {kind: [] for kind in KINDS}
    for (kind, term), score in zip(vocabulary.entries(), cosines):
        ranked[kind].append(Term(term, kind, round(score, 6)))
    for terms in ranked.values():
        terms.sort(key=lambda t: t.score, reverse=True)  # stable: equal scores keep the file's order
    return ranked


def describe(clip: ClipModel, image: Image.Image, vocabulary: Vocabulary, *, per_kind: int,
             cache_dir: Path | None = None, cache_bytes: int | None = None,
             progress: Progress | None = None) -> Description:
    """Four prompts composed from the best terms, and the `per_kind` best terms of each kind."""
    ranked = rank_terms(clip, image, vocabulary, cache_dir=cache_dir, cache_bytes=cache_bytes, progress=progress)
    prompts = compose({kind: [phrase(kind, t.term) for t in terms] for kind, terms in ranked.items()})
    best = tuple(t for kind in KINDS for t in ranked[kind][:per_kind])
    return Description(model=clip.spec, prompts=tuple(prompts), terms=best, meaningless=bool(clip.meaningless))
