"""Honest /search results: a calibrated relevance cut-off per space, and near-duplicates collapsed.

**Relevance.** CLIP cosines have no absolute meaning: 0.27 is a fine text match for one model and
a poor one for another, and a space of screenshots scores differently from one of photos. So each
space is calibrated against a *background of random queries*: the fixed texts of
`BACKGROUND_QUERIES` (concrete, unrelated things a team channel mostly does not hold) are embedded
with the current model and searched in the whole space; each one's best score is what "the least-bad
picture for something that is not there" scores here. The cut-off is a robust upper bound of those
best scores:

    cut-off = median(top) + z · 1.4826 · MAD(top)        (z = CLIPBOT_SEARCH_RELEVANCE_Z, 2 by default)

(1.4826·MAD estimates the standard deviation; median and MAD stay put when a few background things
*are* in the space.) A text-search result scoring below it is a *weak match*. The background is
cached per space and model, and recomputed when the space's number of pictures has changed by more
than `REFRESH_FRACTION` since (checked at most every `RECHECK_SECONDS`). Only text queries are
calibrated: the background is made of texts, and text-to-picture cosines live on another scale
than picture-to-picture ones.

**Near-duplicates.** Results whose embeddings have a cosine of at least
CLIPBOT_SEARCH_DUPLICATE_COSINE (0.95 by default: the same picture re-encoded, resized or
screenshotted again; a repost of the same bytes is 1.0) collapse into the best-ranked of them,
which shows "+N similar"; 1 turns collapsing off. Grouping is greedy in rank order, so a page's groups do not change when
more results are read after it.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import time
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from engine.index import Filter, Hit, ImageIndex

if TYPE_CHECKING:
    from engine.store import Store

BACKGROUND_QUERIES = (
    "a giraffe", "a penguin on ice", "a jellyfish", "a horse in a field", "an owl at night", "a snail",
    "a tiger", "a flock of sheep", "a goldfish in a bowl", "a butterfly on a flower", "a lobster",
    "a bowl of ramen", "a slice of watermelon", "a birthday cake", "a plate of sushi", "a pineapple",
    "a cup of espresso", "fried eggs", "a basket of mushrooms", "a desert with sand dunes",
    "a snowy mountain peak", "a tropical beach", "a waterfall in a forest", "a volcano", "a field of tulips",
    "northern lights", "a frozen lake", "a canyon at sunset", "a steam locomotive", "a hot air balloon",
    "a sailing boat", "a tractor", "a submarine", "a helicopter", "a vintage bicycle", "a rocket launch",
    "a violin", "a grand piano", "a chess board", "a pair of boots", "an umbrella in the rain", "a teapot",
    "a lighthouse", "a medieval castle", "a windmill", "a cathedral ceiling", "a carousel", "an igloo",
    "a knitted sweater", "a bonsai tree", "a cactus", "a pumpkin", "a football stadium", "a bowling alley",
    "a ballet dancer", "a knight in armour", "an astronaut", "a marching band", "a tennis racket",
    "a microscope", "a stained glass window", "a stack of firewood", "a hammock", "a dragon",
)
REFRESH_FRACTION = 0.1
RECHECK_SECONDS = 60.0
BACKGROUND_TTL = 30 * 86400  # a space nobody searched for a month is measured afresh
_MAD_TO_STD = 1.4826
_CACHE = "clipbot:search:background:"


@dataclass(frozen=True)
class Background:
    """The best score of each background query in one space, when the space had `pictures`."""

    top_scores: tuple[float, ...]
    pictures: int

    def cutoff(self, z: float) -> float | None:
        """median + z·1.4826·MAD of the top scores; None without a background (an empty space)."""
        if not self.top_scores:
            return None
        top = np.asarray(self.top_scores, dtype=np.float64)
        median = float(np.median(top))
        mad = float(np.median(np.abs(top - median)))
        return median + z * _MAD_TO_STD * mad

    def is_stale(self, pictures: int) -> bool:
        """Has the space changed enough since to recompute (more than REFRESH_FRACTION of its pictures)?"""
        return abs(pictures - self.pictures) > REFRESH_FRACTION * self.pictures

    def to_json(self) -> dict:
        return {"top_scores": list(self.top_scores), "pictures": self.pictures}

    @classmethod
    def from_json(cls, data: dict) -> "Background":
        return cls(tuple(float(s) for s in data["top_scores"]), int(data["pictures"]))


def measure_background(index: ImageIndex, space_id: str, model: str, queries: np.ndarray,
                       pictures: int) -> Background:
    """Search the whole space with each background query vector; keep each one's best score."""
    top = []
    for vector in queries:
        best = index.search(space_id, model, vector, Filter(), k=1)
        if best:
            top.append(round(best[0].score, 4))
    return Background(tuple(top), pictures)


def space_background(store: "Store", index: ImageIndex, space_id: str, model: str,
                     queries: Callable[[], np.ndarray], *, now: float | None = None) -> Background:
    """The space's background under `model`, from the store unless the space changed enough
    since it was measured; `queries` gives the background query vectors (embedded on demand)."""
    now = time.time() if now is None else now
    key = _CACHE + hashlib.sha256(f"{space_id}\0{model}".encode()).hexdigest()[:32]
    cached = store.get(key)
    background = Background.from_json(cached) if cached else None
    if background is not None and now - float(cached.get("checked", 0)) < RECHECK_SECONDS:
        return background
    pictures = index.stats(space_id, model).embeddings
    if background is None or background.is_stale(pictures):
        background = measure_background(index, space_id, model, queries(), pictures)
    store.set(key, {**background.to_json(), "checked": now}, ttl=BACKGROUND_TTL)
    return background


@dataclass(frozen=True)
class Group:
    """One collapsed result: the best-ranked hit and the near-duplicates that follow it."""

    hit: Hit
    similar: tuple[Hit, ...] = ()


def collapse(hits: Sequence[Hit], vector_of: Callable[[str], np.ndarray | None], threshold: float) -> list[Group]:
    """Group hits (best first) whose pictures' embeddings have a cosine >= threshold with an
    earlier group's first picture; a hit without an embedding (removed meanwhile) stays alone.
    A threshold of 1 or more turns collapsing off (float16 copies of one vector need not reach 1)."""
    if threshold >= 1.0:
        return [Group(hit) for hit in hits]
    groups: list[tuple[Hit, list[Hit]]] = []
    # the first pictures' embeddings (rows filled in order; one matrix, not a stack per hit: a
    # page of fused results reads hundreds of hits), and which group each leads
    leaders: np.ndarray | None = None
    led: list[int] = []
    for hit in hits:
        vector = vector_of(hit.occurrence.content_hash)
        if vector is not None and led:
            sims = leaders[:len(led)] @ vector
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                groups[led[best]][1].append(hit)
                continue
        if vector is not None:
            if leaders is None:
                leaders = np.empty((len(hits), len(vector)), np.float32)
            leaders[len(led)] = vector
            led.append(len(groups))
        groups.append((hit, []))
    return [Group(first, tuple(more)) for first, more in groups]
