"""The full-text side of both ImageIndex backends (SQLite FTS5, PostgreSQL tsvector + GIN):
OCR text stored with the picture, message text and file name with the occurrence, ranked word
search, the phrase filter inside the query, and removal."""

from __future__ import annotations

from engine.index import Filter
from tests.index import test_index as suite
from tests.index.test_index import MODEL, occ, vec

index = suite.index  # the same backend fixture: every case on SQLite, pgvector exact and pgvector HNSW


def _posted(index, space="s"):
    """Four pictures: words on one, in the message of another, in the file name of a third."""
    index.add(space, MODEL, {h: (vec(i), b"t") for i, h in enumerate("abcd")}, [
        occ(space, "c1", "m-a", "a", posted_at=1.0),
        occ(space, "c1", "m-b", "b", message_text="Design review notes", posted_at=2.0),
        occ(space, "c2", "m-c", "c", file_name="Whiteboard-Sketch.PNG", posted_at=3.0),
        occ(space, "c1", "m-d", "d", message_text="lunch", posted_at=4.0),
    ], texts={"a": "Quarterly roadmap\nkiwi budget 2025", "b": "", "c": ""})


def _ids(found):
    return [o.message_id for o in found]


def test_words_on_the_picture_in_the_message_and_in_the_file_name_are_found(index):
    _posted(index)
    assert _ids(index.text_search("s", MODEL, ["kiwi"], Filter(), k=10)) == ["m-a"]
    assert _ids(index.text_search("s", MODEL, ["sketch"], Filter(), k=10)) == ["m-c"]
    # two words of three beat one of three
    assert _ids(index.text_search("s", MODEL, ["design", "review", "whiteboard"], Filter(), k=10)) == ["m-b", "m-c"]
    assert index.text_search("s", MODEL, ["nothing"], Filter(), k=10) == []
    found = index.text_search("s", MODEL, ["notes"], Filter(), k=10)[0]
    assert (found.message_text, found.file_name) == ("Design review notes", "")
    assert index.texts("s", ["a", "b", "d"]) == {"a": "Quarterly roadmap\nkiwi budget 2025", "b": ""}


def test_text_search_keeps_to_the_filter_the_space_and_the_model(index):
    _posted(index)
    _posted(index, space="other")
    assert _ids(index.text_search("s", MODEL, ["sketch", "kiwi"], Filter(channels=frozenset({"c1"})), k=10)) == ["m-a"]
    assert index.text_search("s", MODEL, ["kiwi"], Filter(channels=frozenset()), k=10) == []
    assert {o.space_id for o in index.text_search("s", MODEL, ["kiwi", "sketch", "notes"], Filter(), k=10)} == {"s"}
    assert index.text_search("s", "model-b", ["kiwi"], Filter(), k=10) == []
    assert len(index.text_search("s", MODEL, ["kiwi", "sketch", "notes"], Filter(), k=2)) == 2


def test_a_phrase_filter_keeps_the_words_in_order_inside_the_vector_search(index):
    _posted(index)
    hits = index.search("s", MODEL, vec(3), Filter(text=("quarterly roadmap",)), k=10)
    assert [h.occurrence.message_id for h in hits] == ["m-a"]
    assert index.search("s", MODEL, vec(3), Filter(text=("roadmap quarterly",)), k=10) == []
    assert index.search("s", MODEL, vec(0), Filter(text=("design review", "notes")), k=10)[0].occurrence.message_id == "m-b"
    assert index.search("s", MODEL, vec(0), Filter(text=("design review", "kiwi")), k=10) == []
    assert _ids(index.text_search("s", MODEL, ["kiwi", "design"], Filter(text=("review notes",)), k=10)) == ["m-b"]


def test_a_repost_shares_the_picture_text_and_later_text_reaches_every_posting(index):
    _posted(index)
    index.add("s", MODEL, {}, [occ("s", "c3", "m-a2", "a", posted_at=9.0)])
    assert _ids(index.text_search("s", MODEL, ["kiwi"], Filter(), k=10)) == ["m-a2", "m-a"]
    index.add("s", MODEL, {}, [], texts={"d": "Sprint retro"})  # read later (the re-embed reads old pictures)
    assert _ids(index.text_search("s", MODEL, ["retro"], Filter(), k=10)) == ["m-d"]
    assert _ids(index.text_search("s", MODEL, ["lunch"], Filter(), k=10)) == ["m-d"]  # its message still counts


def test_removed_pictures_take_their_words_along(index):
    _posted(index)
    assert index.remove_message("s", "m-a") == 1
    assert index.text_search("s", MODEL, ["kiwi"], Filter(), k=10) == []
    assert index.texts("s", ["a"]) == {}
    index.remove_channel("s", "c2")
    assert index.text_search("s", MODEL, ["sketch"], Filter(), k=10) == []
    assert _ids(index.text_search("s", MODEL, ["notes"], Filter(), k=10)) == ["m-b"]


def _bm25_of_fts5(index, words, allowed):
    """The order the embedded index ranked space s by before it computed bm25 itself: FTS5's own
    `bm25()` over every match, the allowed ones kept, lowest (best) first, then newest."""
    from engine.index.text import fts_any

    rows = index._db.execute("SELECT o.id, o.message_id, o.posted_at, bm25(occurrence_words) FROM occurrence_words "
                             "JOIN occurrences o ON o.id = occurrence_words.rowid WHERE occurrence_words MATCH ? "
                             "AND o.space = 's'", (fts_any(words),)).fetchall()
    kept = [r for r in rows if allowed(r[1])]
    return [r[1] for r in sorted(kept, key=lambda r: (r[3], -r[2]))], {r[0]: r[3] for r in kept}


def test_the_embedded_bm25_is_fts5s_bm25_exactly(tmp_path):
    """The embedded backend ranks with FTS5's bm25 formula over the word counts it keeps instead of
    calling `bm25()` on every match: the same scores bit for bit and the same order, over words
    repeated on a picture, in messages and file names, several spaces, removals and updates."""
    import numpy as np

    from engine.index import open_index
    from engine.index.embedded import _bm25

    index = open_index(None, tmp_path)
    rng = np.random.default_rng(5)
    vocab = ["kiwi", "budget", "roadmap", "design", "review", "notes", "sprint", "retro", "café", "übung", "数据", "q3"]
    for space in ("s", "other"):
        index.add(space, MODEL, {f"h{i}": (vec(i), None) for i in range(120)}, [
            occ(space, f"c{i % 3}", f"m{i}", f"h{i}", posted_at=float(i % 40),
                message_text=" ".join(rng.choice(vocab, int(rng.integers(0, 6)))),
                file_name=f"{rng.choice(vocab)}-{rng.choice(vocab)}.png" if i % 4 == 0 else "")
            for i in range(120)],
            texts={f"h{i}": "\n".join(" ".join(rng.choice(vocab, int(rng.integers(1, 9)))) for _ in range(i % 4))
                   for i in range(120)})
    index.remove_message("s", "m7")
    index.add("s", MODEL, {}, [], texts={"h9": "kiwi kiwi kiwi kiwi budget"})  # read again: new counts
    queries = [["kiwi"], ["kiwi", "budget"], ["design", "review", "notes"], ["café", "数据", "nothing"], ["q3", "q3"],
               ["übung", "sprint", "retro", "roadmap"]]
    for where, allowed in ((Filter(), lambda m: True),
                           (Filter(channels=frozenset({"c1"})), lambda m: int(m[1:]) % 3 == 1)):
        for words in queries:
            scores = _bm25_of_fts5(index, words, lambda m: True)[1]
            view = index._view("s", MODEL)
            postings, rows, tokens = index._postings(words)
            ids = np.array(sorted(i for i in scores if i in set(view.occ_ids.tolist())), np.int64)
            mine = _bm25(ids, view.word_counts[np.searchsorted(view.occ_ids, ids)], words, postings, rows, tokens)
            assert mine.tolist() == [scores[i] for i in ids.tolist()]  # equal floats, not approximately
            got = [o.message_id for o in index.text_search("s", MODEL, words, where, k=500)]
            ranked = _bm25_of_fts5(index, words, allowed)[0]
            assert got == ranked and len(got) > 5
            assert [o.message_id for o in index.text_search("s", MODEL, words, where, k=5)] == ranked[:5]
    index.close()


def test_an_embedded_index_from_before_word_counts_counts_them_once(tmp_path):
    from engine.index import open_index

    index = open_index(None, tmp_path)
    _posted(index)
    index.add("s", MODEL, {}, [], texts={"d": "kiwi kiwi notes"})
    before = [_ids(index.text_search("s", MODEL, w, Filter(), k=10)) for w in (["kiwi"], ["notes", "kiwi"])]
    index._db.execute("ALTER TABLE occurrences DROP COLUMN word_count")
    index._db.execute("DELETE FROM word_repeats")
    index.close()
    index = open_index(None, tmp_path)
    assert index._db.execute("SELECT count(*) FROM word_repeats").fetchone()[0] > 0
    assert [_ids(index.text_search("s", MODEL, w, Filter(), k=10)) for w in (["kiwi"], ["notes", "kiwi"])] == before
    assert before[0] == ["m-d", "m-a"]  # "kiwi" twice among three words beats once among five
    index.close()
