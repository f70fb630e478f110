"""The relevance cut-off and near-duplicate collapse of /search, on synthetic embeddings in a real
(embedded) index: what a background of random queries says, when it is measured again, how
results group and page."""

from __future__ import annotations

import numpy as np
import pytest

from engine.index import Filter, Hit, Occurrence, open_index
from engine.store import SqliteStore
from plugins.search import pipeline
from plugins.search.relevance import (
    RECHECK_SECONDS, Background, collapse, measure_background, space_background)

DIM = 32
MODEL = "m"


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


def random_units(n, seed):
    return np.stack([unit(v) for v in np.random.default_rng(seed).standard_normal((n, DIM))])


@pytest.fixture
def index(tmp_path):
    idx = open_index(None, tmp_path)
    yield idx
    idx.close()


def put(index, vectors, *, space="s", start=0):
    """Picture i (hash h<i>) posted once as message m<i>, oldest first."""
    hashes = [f"h{start + i}" for i in range(len(vectors))]
    index.add(space, MODEL, {h: (v, b"t") for h, v in zip(hashes, vectors)},
              [Occurrence(space, "c", f"m{start + i}", h, posted_at=1e9 + start + i) for i, h in enumerate(hashes)])
    return hashes


def test_the_cutoff_is_median_plus_z_robust_deviations():
    background = Background((0.1, 0.2, 0.3, 0.4, 10.0), pictures=5)  # one background thing *is* there
    assert background.cutoff(2.0) == pytest.approx(0.3 + 2 * 1.4826 * 0.1)  # the outlier moves nothing
    assert background.cutoff(0.0) == pytest.approx(0.3)
    assert Background((), 0).cutoff(2.0) is None  # an empty space has no background


def test_a_background_is_stale_after_ten_percent_change():
    assert not Background((0.2,), 100).is_stale(110) and not Background((0.2,), 100).is_stale(90)
    assert Background((0.2,), 100).is_stale(111) and Background((0.2,), 100).is_stale(89)
    assert Background((), 0).is_stale(1) and not Background((), 0).is_stale(0)


def test_a_query_for_what_is_there_clears_the_cutoff_and_one_for_what_is_not_does_not(index):
    pictures = random_units(300, seed=1)
    put(index, pictures)
    background = measure_background(index, "s", MODEL, random_units(64, seed=2), pictures=300)
    assert len(background.top_scores) == 64
    cutoff = background.cutoff(2.0)
    noise = random_units(20, seed=3)
    present = [unit(pictures[i] + 0.5 * noise[i]) for i in range(20)]  # near a posted picture
    absent = random_units(200, seed=4)  # random directions: nothing there
    best = [index.search("s", MODEL, q, Filter(), k=1)[0].score for q in present]
    assert min(best) > cutoff
    above = sum(index.search("s", MODEL, q, Filter(), k=1)[0].score >= cutoff for q in absent)
    assert above <= 0.1 * len(absent)  # a few random queries do beat it: ~2-5% of a normal tail


def test_the_background_is_cached_and_measured_again_when_the_space_grows(index):
    store = SqliteStore()
    put(index, random_units(40, seed=5))
    measured = []

    def queries():
        measured.append(1)
        return random_units(16, seed=6)

    first = space_background(store, index, "s", MODEL, queries, now=1000.0)
    assert first.pictures == 40 and len(measured) == 1
    assert space_background(store, index, "s", MODEL, queries, now=1001.0) == first and len(measured) == 1
    put(index, random_units(2, seed=7), start=40)  # 5%: not enough to measure again
    later = 1000.0 + RECHECK_SECONDS + 1
    assert space_background(store, index, "s", MODEL, queries, now=later) == first and len(measured) == 1
    put(index, random_units(4, seed=8), start=42)  # 46 now: 15% more than when measured
    assert space_background(store, index, "s", MODEL, queries, now=later + 1) == first  # checked a minute ago
    grown = space_background(store, index, "s", MODEL, queries, now=later + RECHECK_SECONDS + 2)
    assert grown.pictures == 46 and len(measured) == 2
    other = space_background(store, index, "s", "other-model", queries, now=later)  # per model too
    assert other.top_scores == () and len(measured) == 3


def hit(h, score):
    return Hit(Occurrence("s", "c", "m-" + h, h), score)


def test_near_duplicates_collapse_into_the_first_of_them():
    a, b = random_units(2, seed=9)
    rng = np.random.default_rng(10)
    vectors = {"a": a, "a2": unit(a + 0.05 * rng.standard_normal(DIM)), "b": b, "a3": unit(a + 0.1 * b),
               "b2": unit(b + 0.05 * rng.standard_normal(DIM))}
    assert float(vectors["a2"] @ a) > 0.95 and float(vectors["a3"] @ a) > 0.95
    hits = [hit("a", 0.9), hit("b", 0.8), hit("gone", 0.7), hit("a2", 0.6), hit("b2", 0.5), hit("a3", 0.4),
            hit("a", 0.4)]  # the same picture posted again
    groups = collapse(hits, vectors.get, 0.95)
    assert [(g.hit.occurrence.content_hash, [m.occurrence.content_hash for m in g.similar]) for g in groups] == [
        ("a", ["a2", "a3", "a"]), ("b", ["b2"]), ("gone", [])]
    assert len(collapse(hits, vectors.get, 1.0)) == len(hits)  # 1 turns collapsing off


def test_collapsed_pages_follow_on_and_say_when_there_is_more(index):
    centres = random_units(5, seed=11)
    rng = np.random.default_rng(12)
    copies = [unit(c + 0.03 * rng.standard_normal(DIM)) for c in centres for _ in range(3)]  # 5 groups of 3
    put(index, copies)
    query = unit(centres.sum(axis=0))
    pages = [pipeline.search(index, MODEL, "s", query, Filter(), k=2, offset=o, duplicate_cosine=0.95)
             for o in (0, 2, 4)]
    assert [p.more for p in pages] == [True, True, False] and [len(p.results) for p in pages] == [2, 2, 1]
    results = [h for p in pages for h, _ in p.results]
    assert all(h.similar == 2 for h in results)
    groups = {int(h.message_id[1:]) // 3 for h in results}
    assert groups == set(range(5))  # each group once, none split across pages
    flat = pipeline.search(index, MODEL, "s", query, Filter(), k=15, offset=0, duplicate_cosine=1.0)
    assert len(flat.results) == 15 and not flat.more  # 1: nothing collapses
    weak = pipeline.search(index, MODEL, "s", query, Filter(), k=5, offset=0, duplicate_cosine=0.95,
                           weak_below=flat.results[7][0].score)
    assert [h.weak for h, _ in weak.results] == [h.score < flat.results[7][0].score for h, _ in weak.results]


def test_a_fused_text_match_is_ranked_in_shown_with_its_words_and_never_weak(index):
    # the words on a picture (OCR) found it: fused with CLIP's ranking, it comes first though its
    # looks score low, carries the matched line, and is not called weak under a cut-off its cosine misses
    vectors = random_units(30, seed=21)
    query = vectors[0]
    far = int(np.argmin(vectors @ query))
    put(index, vectors)
    index.add("s", MODEL, {}, [], texts={f"h{far}": "kiwi budget 2025"})
    found = pipeline.search(index, MODEL, "s", query, Filter(), k=5, offset=0, words=["kiwi"],
                            duplicate_cosine=0.95, weak_below=0.9)
    first, _ = found.results[0]
    assert first.message_id == f"m{far}" and first.text_match and first.text == "kiwi budget 2025"
    assert first.score == pytest.approx(float(vectors[far] @ query), abs=1e-3) and first.score < 0.9
    assert not first.weak
    rest = [h for h, _ in found.results[1:]]
    assert rest[0].message_id == "m0" and not rest[0].weak  # the picture itself: cosine 1
    assert all(h.weak == (h.score < 0.9) and not h.text_match for h in rest)
    assert found.more
