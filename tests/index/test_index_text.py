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
