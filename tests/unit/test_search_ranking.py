"""plugins.search.ranking (reciprocal rank fusion, result excerpts) and engine.index.text (the words
both index backends are given)."""

from __future__ import annotations

from engine.index.text import fts_any, fts_phrases, query_words, searchable, tokens, ts_any, ts_phrases
from plugins.search.ranking import RRF_K, excerpt, fuse


def test_a_text_match_rises_above_pictures_that_only_look_alike():
    clip = ["a", "b", "c", "d"]
    assert fuse(clip, ["d"], depth=4) == ["d", "a", "b", "c"]
    # beyond CLIP's candidates, a text match still counts as just after them: it beats CLIP's best alone
    assert fuse(clip, ["z"], depth=4)[0] == "z"
    assert fuse(clip, [], depth=4) == clip  # no text: CLIP's order, untouched
    # two rankings agreeing beat one ranking's winner
    assert fuse(["a", "b", "c"], ["c", "b"], depth=3)[-1] == "a"


def test_fused_scores_are_the_reciprocal_ranks():
    # b: CLIP rank 2 + text rank 3; x: text rank 1 + CLIP "rank" depth + 1; y: text rank 2 + the same
    def rrf(*ranks):
        return sum(1 / (RRF_K + r) for r in ranks)

    assert rrf(1, 3) > rrf(2, 3) == rrf(3, 2) > rrf(1)  # depth 2: x, then b and y tied (CLIP's order), a
    assert fuse(["a", "b"], ["x", "y", "b"], depth=2) == ["x", "b", "y", "a"]
    assert rrf(2, 3) > rrf(1, 1001)  # deeper candidates count a missing CLIP rank for less: b wins
    assert fuse(["a", "b"], ["x", "y", "b"], depth=1000)[0] == "b"


def test_excerpts_show_the_matching_lines_else_the_first_ones():
    text = "Quarterly roadmap\nkiwi   budget 2025\nteam offsite"
    assert excerpt(text, ["kiwi", "offsite"]) == "kiwi budget 2025 / team offsite"
    assert excerpt(text, ["banana"]) == "Quarterly roadmap / kiwi budget 2025 / team offsite"
    assert excerpt("", ["kiwi"]) == ""
    long = excerpt("word " * 100, [])
    assert len(long) == 120 and long.endswith("…")


def test_words_are_case_folded_runs_of_letters_and_digits_and_queries_never_carry_syntax():
    assert tokens("Whiteboard-Sketch.PNG, v2_final") == ["whiteboard", "sketch", "png", "v2", "final"]
    assert searchable("Straße", "Café 日本語") == "strasse café 日本語"
    assert query_words(["the design review whiteboard", "Design"]) == ["design", "review", "whiteboard"]
    assert query_words(["the"]) == ["the"]  # nothing but stop words: rank by them anyway
    assert fts_any(["kiwi", "or"]) == '"kiwi" OR "or"'
    assert fts_phrases(("Quarterly  roadmap!", 'a "b"')) == '"quarterly roadmap" AND "a b"'
    assert ts_any(["kiwi", "or"]) == "'kiwi' | 'or'"
    assert ts_phrases(("quarterly roadmap", "x")) == "('quarterly' <-> 'roadmap') & ('x')"


def _fuse_by_items(clip_ranked, text_ranked, *, depth):
    """fuse() as it was written before it numbered the items (keyed by the items themselves)."""
    scores = {}
    clip_rank = {item: rank for rank, item in enumerate(clip_ranked, start=1)}
    for item, rank in clip_rank.items():
        scores[item] = 1 / (RRF_K + rank)
    for rank, item in enumerate(text_ranked, start=1):
        scores[item] = scores.get(item, 1 / (RRF_K + depth + 1)) + 1 / (RRF_K + rank)
    position = {item: i for i, item in enumerate([*clip_ranked, *(t for t in text_ranked if t not in clip_rank)])}
    return sorted(scores, key=lambda item: (-scores[item], position[item]))


def test_fusing_numbered_items_gives_the_same_order_as_fusing_the_items():
    import random

    rng = random.Random(3)
    for _ in range(500):
        pool = [f"o{i}" for i in range(rng.randint(0, 60))]
        clip = rng.sample(pool, rng.randint(0, len(pool)))
        text = [rng.choice(pool) for _ in range(rng.randint(0, len(pool)))] if pool else []  # repeats too
        depth = rng.choice([len(clip), 200])
        assert fuse(clip, text, depth=depth) == _fuse_by_items(clip, text, depth=depth)
