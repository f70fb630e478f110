"""One ranking from two: CLIP's similarity order and the full-text order (light: no numpy).

Reciprocal rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009): each result scores
Σ 1 / (RRF_K + rank) over the rankings it is in, rank 1 the best. It needs no calibration
between a cosine and a bm25 score, and a picture whose words match the query rises above
every picture that only looks like it: text rank 1 alone is worth as much as CLIP rank 1
alone, and a text match also has some CLIP rank (a match beyond CLIP's first `depth` counts
as rank depth + 1 there), so it wins the tie. Ties keep CLIP's order.
"""

from __future__ import annotations

from typing import Hashable, Sequence, TypeVar

from engine.index.text import tokens

__all__ = ["FUSION_DEPTH", "RRF_K", "excerpt", "fuse"]

T = TypeVar("T", bound=Hashable)

RRF_K = 60  # the paper's constant: how fast a rank's weight falls off (it found 60 robust)
FUSION_DEPTH = 200  # candidates taken from each ranking; at least every result up to the page asked for
EXCERPT_CHARS = 120


def fuse(clip_ranked: Sequence[T], text_ranked: Sequence[T], *, depth: int) -> list[T]:
    """Every item of either ranking, best fused score first."""
    # Each item hashed once, to a number: the items are index occurrences (dataclasses of 14
    # fields, hashed field by field each time) and a fused page fuses 2 x 200 of them.
    number: dict[T, int] = {}
    clip = [number.setdefault(item, len(number)) for item in clip_ranked]
    text = [number.setdefault(item, len(number)) for item in text_ranked]
    items = list(number)
    scores: dict[int, float] = {}
    clip_rank = {item: rank for rank, item in enumerate(clip, start=1)}
    for item, rank in clip_rank.items():
        scores[item] = 1 / (RRF_K + rank)
    for rank, item in enumerate(text, start=1):
        scores[item] = scores.get(item, 1 / (RRF_K + depth + 1)) + 1 / (RRF_K + rank)
    position = {item: i for i, item in enumerate([*clip, *(t for t in text if t not in clip_rank)])}
    return [items[i] for i in sorted(scores, key=lambda item: (-scores[item], position[item]))]


def excerpt(text: str, words: Sequence[str]) -> str:
    """What a result shows of its picture's text: the lines with a query word in them, else
    its first words; at most EXCERPT_CHARS characters."""
    lines = [" ".join(line.split()) for line in (text or "").splitlines() if line.strip()]
    wanted = set(words)
    matched = [line for line in lines if wanted & set(tokens(line))]
    shown = " / ".join(matched or lines)
    return shown if len(shown) <= EXCERPT_CHARS else shown[:EXCERPT_CHARS - 1].rstrip() + "…"
