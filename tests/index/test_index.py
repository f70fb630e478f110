"""One suite for both ImageIndex backends, each against the real thing: SQLite + float16
matrices on disk, and PostgreSQL + pgvector (HNSW) started by pgserver."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.index import Filter, Occurrence, open_index

DIM = 32
MODEL = "model-a"


@pytest.fixture(params=["embedded", "pgvector", "pgvector-hnsw"])
def index(request, tmp_path):
    if request.param == "embedded":
        idx = open_index(None, tmp_path)
    else:
        idx = open_index(request.getfixturevalue("postgres_url"), tmp_path)
        if request.param == "pgvector-hnsw":
            idx.exact_below = 0  # every search through the HNSW iterative scan, as in a big space
    yield idx
    idx.close()


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def occ(space, channel, message, h, **kw) -> Occurrence:
    kw.setdefault("posted_at", 1.7e9)
    return Occurrence(space_id=space, channel_id=channel, message_id=message, content_hash=h, **kw)


def fill(index, space, n, channels=("c1",), model=MODEL, seed=0):
    """n pictures, picture i posted in channels[i % len] as message m<i>; returns their vectors."""
    vectors = {f"h{i}": vec(seed * 100_000 + i) for i in range(n)}
    index.add(space, model, {h: (v, b"thumb-" + h.encode()) for h, v in vectors.items()},
              [occ(space, channels[i % len(channels)], f"m{i}", f"h{i}", author_id=f"u{i % 3}",
                   posted_at=1.7e9 + i) for i in range(n)])
    return vectors


def test_an_image_query_finds_the_image_itself_first(index):
    vectors = fill(index, "s", 50)
    for h in ("h0", "h17", "h49"):
        hits = index.search("s", MODEL, vectors[h], Filter(), k=5)
        assert hits[0].occurrence.content_hash == h
        assert hits[0].score == pytest.approx(1.0, abs=2e-3)
        assert [x.score for x in hits] == sorted((x.score for x in hits), reverse=True)


def test_same_picture_twice_is_one_embedding_two_occurrences(index):
    v = vec(1)
    assert index.missing("s", ["a"], MODEL) == {"a"}
    assert index.add("s", MODEL, {"a": (v, b"t")}, [occ("s", "c1", "m1", "a")]) == 1
    assert index.missing("s", ["a", "b"], MODEL) == {"b"}
    assert index.add("s", MODEL, {}, [occ("s", "c2", "m2", "a")]) == 1
    assert index.add("s", MODEL, {}, [occ("s", "c2", "m2", "a")]) == 0  # the same event again
    stats = index.stats("s", MODEL)
    assert (stats.embeddings, stats.occurrences, stats.channels) == (1, 2, 2)
    hits = index.search("s", MODEL, v, Filter(), k=10)
    assert sorted(h.occurrence.message_id for h in hits) == ["m1", "m2"]
    with pytest.raises(ValueError):
        index.add("s", MODEL, {}, [occ("s", "c1", "m3", "never-embedded")])


def test_filters_channels_authors_dates_and_spaces(index):
    fill(index, "s", 30, channels=("a", "b", "c"))
    fill(index, "other", 30, channels=("a", "b", "c"), seed=1)
    q = vec(999)
    hits = index.search("s", MODEL, q, Filter(channels=frozenset({"b"})), k=100)
    assert len(hits) == 10 and {h.occurrence.channel_id for h in hits} == {"b"}
    assert {h.occurrence.space_id for h in hits} == {"s"}
    hits = index.search("s", MODEL, q, Filter(authors=frozenset({"u1"})), k=100)
    assert len(hits) == 10 and {h.occurrence.author_id for h in hits} == {"u1"}
    hits = index.search("s", MODEL, q, Filter(after=1.7e9 + 10, before=1.7e9 + 20), k=100)
    assert sorted(int(h.occurrence.message_id[1:]) for h in hits) == list(range(10, 20))
    assert index.search("s", MODEL, q, Filter(channels=frozenset()), k=10) == []
    assert index.search("s", MODEL, q, Filter(channels=frozenset({"nope"})), k=10) == []
    assert index.search("nowhere", MODEL, q, Filter(), k=10) == []
    assert index.search("s", "another-model", q, Filter(), k=10) == []


def test_author_ids_resolve_display_names_in_one_space_in_any_case(index):
    index.add("s", MODEL, {"a": (vec(1), None)},
              [occ("s", "c1", "m1", "a", author_id="U1", author_name="Ana"),
               occ("s", "c1", "m2", "a", author_id="U2", author_name="Ánder"),
               occ("s", "c1", "m3", "a", author_id="U3", author_name="bo")])
    index.add("other", MODEL, {"a": (vec(1), None)}, [occ("other", "c1", "m1", "a", author_id="X9", author_name="ana")])
    assert index.author_ids("s", ["ANA"]) == {"U1"}
    assert index.author_ids("s", ["ánder", "bo", "nobody"]) == {"U2", "U3"}
    assert index.author_ids("s", ["U1", ""]) == set()  # ids are not names
    assert index.author_ids("nowhere", ["ana"]) == set()


def test_a_filtered_search_still_returns_k_and_pages_follow_on(index):
    # 1 channel in 25: a global top-k trimmed afterwards would return almost nothing
    space = "big"
    vectors = fill(index, space, 1000, channels=tuple(f"c{i}" for i in range(25)))
    allowed = frozenset({"c7"})
    q = vec(4242)
    hits = index.search(space, MODEL, q, Filter(channels=allowed), k=10)
    assert len(hits) == 10 and {h.occurrence.channel_id for h in hits} == {"c7"}
    exact = sorted((float(vectors[f"h{i}"] @ q), f"h{i}") for i in range(7, 1000, 25))[::-1]
    found = [h.occurrence.content_hash for h in hits]
    assert len(set(found) & {h for _, h in exact[:10]}) >= 9
    page2 = index.search(space, MODEL, q, Filter(channels=allowed), k=10, offset=10)
    assert len(page2) == 10 and not set(found) & {h.occurrence.content_hash for h in page2}
    assert index.search(space, MODEL, q, Filter(channels=allowed), k=10, offset=40) == []


def test_deleting_a_message_removes_it_and_an_orphaned_picture(index):
    v = vec(5)
    index.add("s", MODEL, {"a": (v, b"ta"), "b": (vec(6), b"tb")},
              [occ("s", "c1", "m1", "a", source_id="f1"), occ("s", "c1", "m1", "b", source_id="f2"),
               occ("s", "c2", "m2", "a")])
    assert index.remove_message("s", "m1", source_ids=("f2",)) == 1  # one file of the message
    assert index.thumbnails("s", ["a", "b"]) == {"a": b"ta"}
    assert index.embedding("s", "b", MODEL) is None
    assert index.remove_message("s", "m1") == 1
    assert index.embedding("s", "a", MODEL) is not None  # still posted in m2
    assert index.remove_message("s", "m2", channel_id="wrong") == 0
    assert index.remove_message("s", "m2", channel_id="c2") == 1
    assert index.search("s", MODEL, v, Filter(), k=10) == []
    assert index.thumbnails("s", ["a"]) == {} and index.embedding("s", "a", MODEL) is None
    assert index.stats("s", MODEL).embeddings == 0
    # the freed space is reused and searchable again
    index.add("s", MODEL, {"c": (vec(7), b"tc")}, [occ("s", "c1", "m3", "c")])
    assert index.search("s", MODEL, vec(7), Filter(), k=1)[0].occurrence.message_id == "m3"


def test_channel_removal_and_retention(index):
    fill(index, "s", 12, channels=("a", "b"))
    assert index.remove_channel("s", "a") == 6
    assert {h.occurrence.channel_id for h in index.search("s", MODEL, vec(1), Filter(), k=50)} == {"b"}
    index.add("s", MODEL, {"old": (vec(77), b"t")}, [occ("s", "b", "ancient", "old", posted_at=1000.0)])
    assert index.expire(before=2000.0) == 1
    assert "old" not in {h.occurrence.content_hash for h in index.search("s", MODEL, vec(77), Filter(), k=50)}
    assert index.stats("s", MODEL).occurrences == 6


def test_a_model_change_is_detected_and_reembedding_replaces_the_old_vectors(index):
    fill(index, "s", 5)
    assert index.stats("s", "model-b").stale == 5
    stale = index.stale("model-b", limit=3)
    assert len(stale) == 3 and all(space == "s" for space, _ in stale)
    assert index.search("s", "model-b", vec(0, 48), Filter(), k=5) == []
    new = {h: (vec(1000 + i, 48), None) for i, (_, h) in enumerate(index.stale("model-b", limit=100))}
    index.add("s", "model-b", new, [])
    assert index.stale("model-b", limit=100) == [] and index.stats("s", "model-b").stale == 0
    assert index.search("s", MODEL, vec(0), Filter(), k=5) == []  # the old vectors are gone
    first = next(iter(new))
    hits = index.search("s", "model-b", new[first][0], Filter(), k=1)
    assert hits[0].occurrence.content_hash == first
    assert index.thumbnails("s", [first]) == {first: b"thumb-" + first.encode()}  # kept


def test_occurrences_of_a_message(index):
    fill(index, "s", 3)
    [found] = index.occurrences("s", "m1")
    assert (found.channel_id, found.content_hash, found.author_id) == ("c1", "h1", "u1")
    assert index.occurrences("s", "m1", channel_id="c9") == []


def test_embeddings_of_many_pictures_at_once_and_file_names_kept(index):
    vectors = fill(index, "s", 5)
    index.add("s", MODEL, {}, [occ("s", "c2", "m9", "h3", file_name="whiteboard.jpg")])
    found = index.embeddings("s", ["h1", "h3", "h3", "nope"], MODEL)
    assert set(found) == {"h1", "h3"}
    for h, v in found.items():  # stored as float16, read back as float32
        assert v.dtype == np.float32 and np.allclose(v, vectors[h], atol=1e-3)
    assert index.embeddings("s", ["h1"], "model-b") == {} and index.embeddings("other", ["h1"], MODEL) == {}
    assert index.embeddings("s", [], MODEL) == {}
    [posted] = index.occurrences("s", "m9")
    assert posted.file_name == "whiteboard.jpg" and index.occurrences("s", "m1")[0].file_name == ""
    hits = index.search("s", MODEL, vectors["h3"], Filter(channels=frozenset({"c2"})), k=1)
    assert hits[0].occurrence.file_name == "whiteboard.jpg"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_channel_acls_never_leak(index, data):
    channels = [f"ch{i}" for i in range(data.draw(st.integers(1, 6)))]
    n = data.draw(st.integers(0, 40))
    space = uuid.uuid4().hex[:8]
    posted = [data.draw(st.sampled_from(channels)) for _ in range(n)]
    index.add(space, MODEL, {f"h{i}": (vec(i), None) for i in range(n)},
              [occ(space, c, f"m{i}", f"h{i}") for i, c in enumerate(posted)])
    other = uuid.uuid4().hex[:8]  # another space with the same channel names
    index.add(other, MODEL, {"x": (vec(3), None)}, [occ(other, c, f"x{c}", "x") for c in channels])
    readable = frozenset(data.draw(st.sets(st.sampled_from(channels + ["elsewhere"]))))
    k = data.draw(st.integers(1, 12))
    hits = index.search(space, MODEL, vec(data.draw(st.integers(0, 99))), Filter(channels=readable), k=k)
    assert all(h.occurrence.channel_id in readable and h.occurrence.space_id == space for h in hits)
    assert len(hits) == min(k, sum(c in readable for c in posted))


def test_the_embedded_index_survives_a_reopen(tmp_path):
    first = open_index(None, tmp_path)
    vectors = fill(first, "s", 20)
    first.remove_message("s", "m3")
    first.close()
    again = open_index(f"sqlite:///{tmp_path / 'index'}", tmp_path)
    assert again.search("s", MODEL, vectors["h4"], Filter(), k=1)[0].occurrence.message_id == "m4"
    assert again.stats("s", MODEL).occurrences == 19
    again.close()


def test_two_embedded_handles_see_each_others_writes(tmp_path):
    # worker children of one host share the directory
    a, b = open_index(None, tmp_path), open_index(None, tmp_path)
    fill(a, "s", 4)
    assert len(b.search("s", MODEL, vec(0), Filter(), k=10)) == 4
    b.remove_message("s", "m0")
    assert {h.occurrence.message_id for h in a.search("s", MODEL, vec(0), Filter(), k=10)} == {"m1", "m2", "m3"}
    a.close()
    b.close()


def test_a_bad_index_url_is_a_clear_error(tmp_path):
    from engine.errors import UserError

    with pytest.raises(UserError, match="CLIPBOT_INDEX_URL"):
        open_index("mysql://x", tmp_path)


def _threads(index):
    """c1: a picture in the channel, one in public thread t1, one in private thread t2; c2: one more."""
    index.add("s", MODEL, {f"h{i}": (vec(i), b"t") for i in range(4)}, [
        occ("s", "c1", "m0", "h0"), occ("s", "c1", "m1", "h1", thread_id="t1"),
        occ("s", "c1", "m2", "h2", thread_id="t2", private=True), occ("s", "c2", "m3", "h3")])


def _found(index, where, query=2):
    return sorted(h.occurrence.message_id for h in index.search("s", MODEL, vec(query), where, k=10))


def test_a_private_threads_pictures_are_seen_only_by_who_may_see_the_thread(index):
    _threads(index)
    c1 = frozenset({"c1"})
    assert _found(index, Filter(channels=c1, private_scopes=frozenset())) == ["m0", "m1"]  # public thread: the parent's
    assert _found(index, Filter(channels=c1, private_scopes=frozenset({"t9", "c2"}))) == ["m0", "m1"]
    assert _found(index, Filter(channels=c1, private_scopes=frozenset({"t2"}))) == ["m0", "m1", "m2"]  # inside it
    assert _found(index, Filter(channels=c1, private_scopes=c1)) == ["m0", "m1", "m2"]  # Manage Threads in c1
    assert _found(index, Filter(channels=frozenset({"c2"}), private_scopes=frozenset({"t2", "c1"}))) == ["m3"]
    assert _found(index, Filter(channels=frozenset({"c1", "c2"}), private_scopes=frozenset())) == ["m0", "m1", "m3"]
    assert _found(index, Filter()) == ["m0", "m1", "m2", "m3"]  # the operator
    [private] = index.occurrences("s", "m2")
    assert private.private and private.thread_id == "t2" and private.channel_id == "c1"
    assert not Filter(channels=c1, private_scopes=frozenset()).shows_place(private)
    assert Filter(channels=c1, private_scopes=frozenset({"t2"})).shows_place(private)
    # counts too: the private thread's picture is counted under the thread, not its parent
    assert index.stats("s", MODEL).by_channel == {"c1": 2, "t2": 1, "c2": 1}


def test_a_thread_that_goes_takes_its_pictures_along(index):
    _threads(index)
    assert index.remove_channel("s", "t2") == 1
    assert index.embedding("s", "h2", MODEL) is None and index.thumbnails("s", ["h2"]) == {}
    assert index.remove_channel("s", "t1") == 1
    assert _found(index, Filter()) == ["m0", "m3"]
    assert index.remove_channel("s", "c1") == 1


@pytest.mark.parametrize("backend", ["embedded", "pgvector"])
def test_an_index_from_before_private_threads_hides_its_discord_thread_pictures(backend, tmp_path, request):
    """Old rows do not say whether their thread was private: Discord thread pictures become private
    (found inside the thread and by Manage Threads), other rows are unchanged."""
    columns = ("space, channel, message_id, hash, source_id, author_id, author_name, posted_at, permalink, "
               "thread_id, platform")
    rows = [("s", "c1", "m1", "h1", "", "u", "", 1.0, "", "t1", "discord"),
            ("s", "c1", "m2", "h1", "", "u", "", 1.0, "", None, "discord"),
            ("s", "C1", "m3", "h1", "", "u", "", 1.0, "", "1712.0001", "slack")]
    if backend == "embedded":
        import sqlite3

        (tmp_path / "index").mkdir()
        db = sqlite3.connect(tmp_path / "index" / "index.sqlite3")
        db.execute("CREATE TABLE occurrences (id INTEGER PRIMARY KEY AUTOINCREMENT, space TEXT, channel TEXT, "
                   "message_id TEXT, source_id TEXT, hash TEXT, author_id TEXT, author_name TEXT, posted_at REAL, "
                   "permalink TEXT, thread_id TEXT, platform TEXT, UNIQUE (space, channel, message_id, source_id))")
        db.executemany(f"INSERT INTO occurrences ({columns}) VALUES ({', '.join('?' * 11)})", rows)
        db.commit()
        db.close()
        url = None
    else:
        import psycopg

        url = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE clipbot_occurrences (id bigserial PRIMARY KEY, space text NOT NULL, "
                         "channel text NOT NULL, message_id text NOT NULL, hash text NOT NULL, source_id text NOT NULL "
                         "DEFAULT '', author_id text NOT NULL DEFAULT '', author_name text NOT NULL DEFAULT '', "
                         "posted_at double precision NOT NULL DEFAULT 0, permalink text NOT NULL DEFAULT '', "
                         "thread_id text, platform text NOT NULL DEFAULT '', UNIQUE (space, channel, message_id, source_id))")
            with conn.cursor() as cur:
                cur.executemany(f"INSERT INTO clipbot_occurrences ({columns}) VALUES ({', '.join(['%s'] * 11)})", rows)
    for _ in range(2):  # the second open finds the column and changes nothing
        index = open_index(url, tmp_path)
        assert [o.private for m in ("m1", "m2", "m3") for o in index.occurrences("s", m)] == [True, False, False]
        assert {o.file_name for o in index.occurrences("s", "m1")} == {""}  # the column came later too
        index.add("s", MODEL, {"h1": (vec(1), None)}, [occ("s", "c1", "m4", "h1", thread_id="t5")])
        assert not index.occurrences("s", "m4")[0].private
        index.close()
