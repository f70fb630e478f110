"""The scale-out image index: PostgreSQL + pgvector (HNSW over halfvec, cosine distance).

Embeddings of any dimension share one table; each dimension gets a partial HNSW index on
`embedding::halfvec(dim)`, so a model change with another width needs no migration. The
permission filter (space, channels, authors, dates) is part of the query; pgvector 0.8's
iterative index scans (`hnsw.iterative_scan`) keep reading the graph until k allowed rows
are found, so a filtered search still returns k results. The planner may also answer a
very selective filter exactly from the btree indexes, which is both faster and exact.

Full text: `clipbot_picture_texts` keeps each picture's OCR text; every occurrence has a
`words` tsvector (the `simple` configuration over `engine.index.text.searchable` of its
picture's OCR text, message text and file name) with a GIN index, ranked by `ts_rank_cd`.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import psycopg
from pgvector import HalfVector
from pgvector.psycopg import register_vector

from engine.index import Filter, Hit, Occurrence, SpaceStats, authors_named, unit
from engine.index.text import searchable, ts_any, ts_phrases

_SCHEMA = """
CREATE EXTENSION IF NOT EXISTS vector;
CREATE TABLE IF NOT EXISTS clipbot_embeddings (space text NOT NULL, hash text NOT NULL, model text NOT NULL,
    dim integer NOT NULL, embedding halfvec NOT NULL, PRIMARY KEY (space, hash, model));
CREATE TABLE IF NOT EXISTS clipbot_thumbnails (space text NOT NULL, hash text NOT NULL, data bytea NOT NULL,
    PRIMARY KEY (space, hash));
CREATE TABLE IF NOT EXISTS clipbot_occurrences (id bigserial PRIMARY KEY, space text NOT NULL, channel text NOT NULL,
    message_id text NOT NULL, hash text NOT NULL, source_id text NOT NULL DEFAULT '', author_id text NOT NULL DEFAULT '',
    author_name text NOT NULL DEFAULT '', posted_at double precision NOT NULL DEFAULT 0,
    permalink text NOT NULL DEFAULT '', thread_id text, platform text NOT NULL DEFAULT '',
    private boolean NOT NULL DEFAULT false, file_name text NOT NULL DEFAULT '',
    UNIQUE (space, channel, message_id, source_id));
CREATE INDEX IF NOT EXISTS clipbot_occurrences_hash ON clipbot_occurrences (space, hash);
CREATE INDEX IF NOT EXISTS clipbot_occurrences_message ON clipbot_occurrences (space, message_id);
CREATE INDEX IF NOT EXISTS clipbot_occurrences_channel ON clipbot_occurrences (space, channel);
CREATE INDEX IF NOT EXISTS clipbot_occurrences_time ON clipbot_occurrences (posted_at);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS clipbot_occurrences_thread ON clipbot_occurrences (space, thread_id);
ALTER TABLE clipbot_occurrences ADD COLUMN IF NOT EXISTS message_text text NOT NULL DEFAULT '';
ALTER TABLE clipbot_occurrences ADD COLUMN IF NOT EXISTS file_name text NOT NULL DEFAULT '';
ALTER TABLE clipbot_occurrences ADD COLUMN IF NOT EXISTS words tsvector;
CREATE INDEX IF NOT EXISTS clipbot_occurrences_words ON clipbot_occurrences USING gin (words);
CREATE TABLE IF NOT EXISTS clipbot_picture_texts (space text NOT NULL, hash text NOT NULL, text text NOT NULL,
    PRIMARY KEY (space, hash));
"""
# A table made before private threads had a scope: its Discord thread pictures are treated as
# private (seen from inside the thread and by Manage Threads) rather than risk showing one.
_ADD_PRIVATE = ("ALTER TABLE clipbot_occurrences ADD COLUMN private boolean NOT NULL DEFAULT false",
                "UPDATE clipbot_occurrences SET private = true WHERE platform = 'discord' AND thread_id IS NOT NULL")
_OCC_COLUMNS = ("space, channel, message_id, hash, source_id, author_id, author_name, posted_at, permalink, "
                "thread_id, platform, private, message_text, file_name")
_OCC_TYPES = ("text", "text", "text", "text", "text", "text", "text", "float8", "text", "text", "text", "bool",
              "text", "text")
_N_OCC = len(_OCC_TYPES)
_OCC_OF_O = ", ".join("o." + c.strip() for c in _OCC_COLUMNS.split(","))  # the columns of occurrences `o`
_MAX_EF_SEARCH = 1000  # pgvector's limit
# The HNSW graph: pgvector's default m, and twice its default ef_construction. On CLIP-like clustered
# embeddings at 1M rows the default graph (64) reached recall@10 0.94 at ef_search 400 (bench/search.py).
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 128


class PgVectorIndex:
    def __init__(self, url: str, *, ef_search: int = 400, max_scan_tuples: int = 50_000,
                 exact_below: int = 2_000, filtered_limit: int = 100) -> None:
        self.url = url
        self.filtered_limit = filtered_limit
        self.exact_below = exact_below
        self.ef_search = ef_search
        self.max_scan_tuples = max_scan_tuples
        self._conn = psycopg.connect(url, autocommit=True)
        self._lock = threading.RLock()
        with self._tx() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('clipbot_index_schema'))")
            cur.execute(_SCHEMA)
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                        "AND table_name = 'clipbot_occurrences' AND column_name = 'private'")
            if cur.fetchone() is None:
                for sql in _ADD_PRIVATE:
                    cur.execute(sql)
            cur.execute(_INDEXES)
        register_vector(self._conn)
        self._dims: set[int] = set()

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Cursor]:
        with self._lock, self._conn.transaction(), self._conn.cursor() as cur:
            yield cur

    def _ensure_hnsw(self, cur: psycopg.Cursor, dim: int) -> None:
        if dim in self._dims:
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('clipbot_index_schema'))")
        cur.execute(f"CREATE INDEX IF NOT EXISTS clipbot_embeddings_hnsw_{int(dim)} ON clipbot_embeddings "
                    f"USING hnsw ((embedding::halfvec({int(dim)})) halfvec_cosine_ops) "
                    f"WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}) WHERE dim = {int(dim)}")
        self._dims.add(dim)

    # ---- writing -------------------------------------------------------------------------
    def missing(self, space_id: str, hashes: list[str], model: str) -> set[str]:
        wanted = set(hashes)
        if not wanted:
            return set()
        with self._tx() as cur:
            cur.execute("SELECT hash FROM clipbot_embeddings WHERE space = %s AND model = %s AND hash = ANY(%s)",
                        (space_id, model, list(wanted)))
            return wanted - {h for (h,) in cur.fetchall()}

    def add(self, space_id: str, model: str, embeddings: dict[str, tuple[np.ndarray, bytes | None]],
            occurrences: list[Occurrence], *, texts: dict[str, str] | None = None) -> int:
        with self._tx() as cur:
            if embeddings:
                self._store_vectors(cur, space_id, model, embeddings)
            if texts:
                cur.executemany("INSERT INTO clipbot_picture_texts (space, hash, text) VALUES (%s, %s, %s) "
                                "ON CONFLICT (space, hash) DO UPDATE SET text = EXCLUDED.text",
                                [(space_id, h, t) for h, t in texts.items()])
            added = self._add_occurrences(cur, space_id, occurrences) if occurrences else 0
            self._store_words(cur, space_id, {o.content_hash for o in occurrences} | set(texts or ()))
            return added

    def _store_words(self, cur: psycopg.Cursor, space_id: str, hashes: set[str]) -> None:
        """(Re)write the searchable words of every occurrence of these pictures."""
        if not hashes:
            return
        cur.execute("SELECT o.id, coalesce(t.text, ''), o.message_text, o.file_name FROM clipbot_occurrences o "
                    "LEFT JOIN clipbot_picture_texts t ON t.space = o.space AND t.hash = o.hash "
                    "WHERE o.space = %s AND o.hash = ANY(%s)", (space_id, sorted(hashes)))
        rows = [(searchable(*parts), i) for i, *parts in cur.fetchall()]
        if rows:
            cur.executemany("UPDATE clipbot_occurrences SET words = to_tsvector('simple', %s) WHERE id = %s", rows)

    def _add_occurrences(self, cur: psycopg.Cursor, space_id: str, occurrences: list[Occurrence]) -> int:
        cur.execute("SELECT DISTINCT hash FROM clipbot_embeddings WHERE space = %s AND hash = ANY(%s)",
                    (space_id, [o.content_hash for o in occurrences]))
        known = {h for (h,) in cur.fetchall()}
        for occ in occurrences:
            if occ.space_id != space_id or occ.content_hash not in known:
                raise ValueError(f"occurrence {occ.message_id} has no embedding in space {space_id}")
        columns = list(zip(*(_occ_values(o) for o in occurrences)))
        unnest = ", ".join(f"%s::{t}[]" for t in _OCC_TYPES)
        cur.execute(f"INSERT INTO clipbot_occurrences ({_OCC_COLUMNS}) SELECT * FROM unnest({unnest}) "
                    "ON CONFLICT DO NOTHING", [list(c) for c in columns])
        return cur.rowcount

    def _store_vectors(self, cur: psycopg.Cursor, space_id: str, model: str,
                       embeddings: dict[str, tuple[np.ndarray, bytes | None]]) -> None:
        dims = {len(v) for v, _ in embeddings.values()}
        for dim in dims:
            self._ensure_hnsw(cur, dim)
        cur.executemany(
            "INSERT INTO clipbot_embeddings (space, hash, model, dim, embedding) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (space, hash, model) DO UPDATE SET dim = EXCLUDED.dim, embedding = EXCLUDED.embedding",
            [(space_id, h, model, len(v), HalfVector(unit(v))) for h, (v, _) in embeddings.items()])
        cur.execute("DELETE FROM clipbot_embeddings WHERE space = %s AND hash = ANY(%s) AND model <> %s",
                    (space_id, list(embeddings), model))
        thumbs = [(space_id, h, t) for h, (_, t) in embeddings.items() if t is not None]
        if thumbs:
            cur.executemany("INSERT INTO clipbot_thumbnails (space, hash, data) VALUES (%s, %s, %s) "
                            "ON CONFLICT (space, hash) DO UPDATE SET data = EXCLUDED.data", thumbs)

    # ---- removing ------------------------------------------------------------------------
    def remove_message(self, space_id: str, message_id: str, *, channel_id: str | None = None,
                       source_ids: tuple[str, ...] = ()) -> int:
        sql, args = "space = %s AND message_id = %s", [space_id, message_id]
        if channel_id is not None:
            sql, args = sql + " AND channel = %s", args + [channel_id]
        if source_ids:
            sql, args = sql + " AND source_id = ANY(%s)", args + [list(source_ids)]
        return self._remove_where(sql, args)

    def remove_channel(self, space_id: str, channel_id: str) -> int:
        return self._remove_where("space = %s AND (channel = %s OR thread_id = %s)", [space_id, channel_id, channel_id])

    def expire(self, before: float) -> int:
        return self._remove_where("posted_at < %s", [before])

    def _remove_where(self, where: str, args: list) -> int:
        with self._tx() as cur:
            cur.execute(f"DELETE FROM clipbot_occurrences WHERE {where} RETURNING space, hash", args)
            deleted = cur.fetchall()
            gone = sorted(set(deleted))
            if gone:
                spaces, hashes = [s for s, _ in gone], [h for _, h in gone]
                orphans = ("(space, hash) IN (SELECT g.s, g.h FROM unnest(%s::text[], %s::text[]) AS g(s, h) "
                           "WHERE NOT EXISTS (SELECT 1 FROM clipbot_occurrences o WHERE o.space = g.s AND o.hash = g.h))")
                cur.execute(f"DELETE FROM clipbot_embeddings WHERE {orphans}", (spaces, hashes))
                cur.execute(f"DELETE FROM clipbot_thumbnails WHERE {orphans}", (spaces, hashes))
                cur.execute(f"DELETE FROM clipbot_picture_texts WHERE {orphans}", (spaces, hashes))
        return len(deleted)

    # ---- reading -------------------------------------------------------------------------
    def search(self, space_id: str, model: str, vector: np.ndarray, where: Filter, *, k: int,
               offset: int = 0) -> list[Hit]:
        want = k + offset
        if k <= 0 or _allows_nothing(where):
            return []
        query = unit(vector)
        dim = len(query)
        # The scan's order is relaxed (iterative scans), so take more candidates than asked for and
        # rank them exactly: the LIMIT inside would otherwise keep the first-found, not the best.
        # Unfiltered, the first ef_search-long pass holds them all. Filtered, every row the graph
        # yields is joined to its occurrences and checked, so the LIMIT is what the scan must find
        # *allowed*: asking for ef_search of them would walk ~ef_search/selectivity rows.
        filtered = where != Filter()
        ef_search = min(_MAX_EF_SEARCH, max(2 * want, self.ef_search))
        candidates = min(ef_search, max(2 * want, self.filtered_limit)) if filtered else ef_search
        allowed, args = _allowed(where)
        args.update(space=space_id, model=model, q=HalfVector(query), n=candidates, want=want)
        distance = f"e.embedding::halfvec({dim}) <=> %(q)s::halfvec({dim})"
        with self._tx() as cur:
            # Few allowed rows (a small space, a selective filter): rank them all exactly; the sort
            # key `+ 0` keeps the planner off the HNSW index. Many: the HNSW iterative scan.
            cur.execute(f"SELECT count(*) FROM (SELECT 1 FROM clipbot_occurrences o WHERE {allowed} "
                        f"LIMIT {self.exact_below + 1}) s", args)
            exact = cur.fetchone()[0] <= self.exact_below
            order = f"({distance}) + 0" if exact else distance
            if exact:  # from the few allowed occurrences to their embeddings, not the other way round
                cur.execute("SET LOCAL enable_hashjoin = off")
                cur.execute("SET LOCAL enable_mergejoin = off")
            sql = (f"WITH hits AS MATERIALIZED (SELECT o.id, {distance} AS distance FROM clipbot_embeddings e "
                   "JOIN clipbot_occurrences o ON o.space = e.space AND o.hash = e.hash WHERE e.space = %(space)s "
                   f"AND e.model = %(model)s AND e.dim = {dim} AND {allowed} ORDER BY {order} LIMIT %(n)s) "
                   f"SELECT {_OCC_OF_O}, 1 - h.distance "
                   "FROM hits h JOIN clipbot_occurrences o ON o.id = h.id "
                   "ORDER BY h.distance, o.posted_at DESC LIMIT %(want)s")
            # relaxed order + the outer re-sort: pgvector's recommended way to filter with HNSW
            cur.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
            cur.execute(f"SET LOCAL hnsw.ef_search = {ef_search}")
            cur.execute(f"SET LOCAL hnsw.max_scan_tuples = {int(self.max_scan_tuples)}")
            cur.execute(sql, args)
            rows = cur.fetchall()
        return [Hit(_occ(r[:_N_OCC]), float(r[_N_OCC])) for r in rows[offset:want]]

    def text_search(self, space_id: str, model: str, words: list[str], where: Filter, *, k: int) -> list[Occurrence]:
        if k <= 0 or not words or _allows_nothing(where):
            return []
        allowed, args = _allowed(where)
        args.update(space=space_id, model=model, words=ts_any(words), k=k)
        # Ranked narrow (id, rank, time) and cut to k inside the CTE, the embedding check before
        # the cut: the planner may otherwise sort every match's whole row first and check each
        # one's embedding after (an unbounded sort: 45 MB spilled to disk for a word on a fifth of
        # 1M rows); then only k rows are read whole.
        with self._tx() as cur:
            cur.execute("WITH matches AS MATERIALIZED (SELECT o.id, ts_rank_cd(o.words, query) AS rank, o.posted_at "
                        "FROM clipbot_occurrences o, to_tsquery('simple', %(words)s) query "
                        f"WHERE {allowed} AND o.words @@ query AND EXISTS (SELECT 1 FROM clipbot_embeddings e "
                        "WHERE e.space = o.space AND e.hash = o.hash AND e.model = %(model)s)), "
                        "top AS MATERIALIZED (SELECT id, rank, posted_at FROM matches "
                        "ORDER BY rank DESC, posted_at DESC LIMIT %(k)s) "
                        f"SELECT {_OCC_OF_O} FROM top JOIN clipbot_occurrences o ON o.id = top.id "
                        "ORDER BY top.rank DESC, top.posted_at DESC", args)
            return [_occ(r) for r in cur.fetchall()]

    def texts(self, space_id: str, hashes: list[str]) -> dict[str, str]:
        return self._by_hash("SELECT hash, text FROM clipbot_picture_texts WHERE space = %s AND hash = ANY(%s)",
                             space_id, hashes)

    def _by_hash(self, sql: str, space_id: str, hashes: list[str], *args: object) -> dict:
        """{hash: value} of the rows `sql` (SELECT hash, value ... WHERE space = %s AND hash = ANY(%s) [...])
        finds for these pictures."""
        if not hashes:
            return {}
        with self._tx() as cur:
            cur.execute(sql, (space_id, list(set(hashes)), *args))
            return dict(cur.fetchall())

    def occurrences(self, space_id: str, message_id: str, channel_id: str | None = None) -> list[Occurrence]:
        sql, args = "space = %s AND message_id = %s", [space_id, message_id]
        if channel_id is not None:
            sql, args = sql + " AND channel = %s", args + [channel_id]
        with self._tx() as cur:
            cur.execute(f"SELECT {_OCC_COLUMNS} FROM clipbot_occurrences WHERE {sql} ORDER BY id", args)
            return [_occ(r) for r in cur.fetchall()]

    def author_ids(self, space_id: str, names: list[str]) -> set[str]:
        if not any(names):
            return set()
        with self._tx() as cur:  # a space has few authors
            cur.execute("SELECT DISTINCT author_id, author_name FROM clipbot_occurrences WHERE space = %s",
                        (space_id,))
            rows = cur.fetchall()
        return authors_named(rows, names)

    def embedding(self, space_id: str, content_hash: str, model: str) -> np.ndarray | None:
        return self.embeddings(space_id, [content_hash], model).get(content_hash)

    def embeddings(self, space_id: str, hashes: list[str], model: str) -> dict[str, np.ndarray]:
        found = self._by_hash("SELECT hash, embedding FROM clipbot_embeddings WHERE space = %s AND hash = ANY(%s) "
                              "AND model = %s", space_id, hashes, model)
        return {h: np.asarray(v.to_numpy(), dtype=np.float32) for h, v in found.items()}

    def thumbnails(self, space_id: str, hashes: list[str]) -> dict[str, bytes]:
        found = self._by_hash("SELECT hash, data FROM clipbot_thumbnails WHERE space = %s AND hash = ANY(%s)",
                              space_id, hashes)
        return {h: bytes(d) for h, d in found.items()}

    def stale(self, model: str, limit: int) -> list[tuple[str, str]]:
        with self._tx() as cur:
            cur.execute("SELECT DISTINCT o.space, o.hash FROM clipbot_occurrences o WHERE NOT EXISTS (SELECT 1 FROM "
                        "clipbot_embeddings e WHERE e.space = o.space AND e.hash = o.hash AND e.model = %s) LIMIT %s",
                        (model, limit))
            return [tuple(r) for r in cur.fetchall()]

    def stats(self, space_id: str, model: str) -> SpaceStats:
        with self._tx() as cur:
            cur.execute("SELECT COUNT(*) FROM clipbot_embeddings WHERE space = %s AND model = %s", (space_id, model))
            embeddings = cur.fetchone()[0]
            cur.execute("SELECT CASE WHEN private THEN thread_id ELSE channel END AS scope, COUNT(*) "
                        "FROM clipbot_occurrences WHERE space = %s GROUP BY scope", (space_id,))
            by_channel = dict(cur.fetchall())
            cur.execute("SELECT COUNT(DISTINCT o.hash) FROM clipbot_occurrences o WHERE o.space = %s AND NOT EXISTS "
                        "(SELECT 1 FROM clipbot_embeddings e WHERE e.space = o.space AND e.hash = o.hash "
                        "AND e.model = %s)", (space_id, model))
            stale = cur.fetchone()[0]
        return SpaceStats(embeddings, sum(by_channel.values()), len(by_channel), stale, by_channel)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _allows_nothing(where: Filter) -> bool:
    """No channel or no author allowed at all (an empty list, not no list): nothing to search."""
    return (where.channels is not None and not where.channels) or (where.authors is not None and not where.authors)


def _allowed(where: Filter) -> tuple[str, dict]:
    """The SQL condition (on occurrences `o`, in space %(space)s) for what `where` allows, and its arguments."""
    conditions, args = ["o.space = %(space)s"], {}
    if where.channels is not None:
        conditions.append("o.channel = ANY(%(channels)s)")
        args["channels"] = sorted(where.channels)
    if where.authors is not None:
        conditions.append("o.author_id = ANY(%(authors)s)")
        args["authors"] = sorted(where.authors)
    if where.private_scopes is not None:  # a private thread's pictures: for who may see the thread
        conditions.append("(NOT o.private OR o.thread_id = ANY(%(scopes)s) OR o.channel = ANY(%(scopes)s))")
        args["scopes"] = sorted(where.private_scopes)
    if where.after is not None:
        conditions.append("o.posted_at >= %(after)s")
        args["after"] = where.after
    if where.before is not None:
        conditions.append("o.posted_at < %(before)s")
        args["before"] = where.before
    if where.text:
        conditions.append("o.words @@ to_tsquery('simple', %(phrases)s)")
        args["phrases"] = ts_phrases(where.text)
    return " AND ".join(conditions), args


def _occ_values(occ: Occurrence) -> tuple:
    return (occ.space_id, occ.channel_id, occ.message_id, occ.content_hash, occ.source_id, occ.author_id,
            occ.author_name, float(occ.posted_at), occ.permalink, occ.thread_id, occ.platform, bool(occ.private),
            occ.message_text, occ.file_name)


def _occ(row) -> Occurrence:
    return Occurrence(space_id=row[0], channel_id=row[1], message_id=row[2], content_hash=row[3], source_id=row[4],
                      author_id=row[5], author_name=row[6], posted_at=row[7], permalink=row[8], thread_id=row[9],
                      platform=row[10], private=bool(row[11]), message_text=row[12] or "", file_name=row[13] or "")
