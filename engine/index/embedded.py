"""The embedded image index: SQLite metadata + an exact cosine scan over float16 matrices.

Each (space, model) has a matrix file of float16 rows (row i at byte i·dim·2), appended in
place and memory-mapped for searches; rows of deleted pictures are zeroed and reused. A
search scans every row of its space (one matrix-vector product: ~10 ms per 100k 512-d rows
on one core) and applies the filter to the occurrence arrays before taking the top k, so
the answer is exact and never crosses a permission boundary.

Full text: `picture_texts` keeps each picture's OCR text; an FTS5 table (`occurrence_words`,
rowid = occurrence id) holds the searchable words of each occurrence (its picture's OCR text,
message text and file name, `engine.index.text.searchable`). Ranking is FTS5's bm25, computed
here in numpy (`_bm25`) rather than by FTS5's `bm25()` for every match (~1 µs a row: a docsize
lookup and a walk of the position lists, 20+ ms for a common word at 100k): FTS5 gives each
query word's matching rowids and the table's row and token counts, the view holds each
occurrence's word count (`occurrences.word_count`, FTS5's document length) and `word_repeats`
the few (word, occurrence) pairs where a word is there more than once, so the term frequencies
are known without reading position lists. Same formula, same order of operations, the same
float64 scores as `bm25()` (tests/index/test_index_text.py checks them equal).

Several processes may share a directory (the worker children of one host): SQLite
serialises writers, rows are allocated inside the write transaction, and every write bumps
the space's generation so readers reload their cached view.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from engine.datadir import create_file, make_dir
from engine.index import Filter, Hit, Occurrence, SpaceStats, authors_named, unit
from engine.index.text import fts_any, fts_phrases, searchable

_SCHEMA = """
CREATE TABLE IF NOT EXISTS matrices (space TEXT, model TEXT, file TEXT, dim INTEGER, rows INTEGER,
    PRIMARY KEY (space, model));
CREATE TABLE IF NOT EXISTS embeddings (space TEXT, hash TEXT, model TEXT, row INTEGER,
    PRIMARY KEY (space, hash, model));
CREATE TABLE IF NOT EXISTS free_rows (space TEXT, model TEXT, row INTEGER, PRIMARY KEY (space, model, row));
CREATE TABLE IF NOT EXISTS thumbnails (space TEXT, hash TEXT, data BLOB, PRIMARY KEY (space, hash));
CREATE TABLE IF NOT EXISTS occurrences (id INTEGER PRIMARY KEY AUTOINCREMENT, space TEXT, channel TEXT,
    message_id TEXT, source_id TEXT, hash TEXT, author_id TEXT, author_name TEXT, posted_at REAL,
    permalink TEXT, thread_id TEXT, platform TEXT, private INTEGER NOT NULL DEFAULT 0,
    message_text TEXT NOT NULL DEFAULT '', file_name TEXT NOT NULL DEFAULT '',
    UNIQUE (space, channel, message_id, source_id));
CREATE INDEX IF NOT EXISTS occurrences_hash ON occurrences (space, hash);
CREATE INDEX IF NOT EXISTS occurrences_message ON occurrences (space, message_id);
CREATE INDEX IF NOT EXISTS occurrences_channel ON occurrences (space, channel);
CREATE INDEX IF NOT EXISTS occurrences_time ON occurrences (posted_at);
CREATE TABLE IF NOT EXISTS generations (space TEXT PRIMARY KEY, gen INTEGER);
CREATE TABLE IF NOT EXISTS picture_texts (space TEXT, hash TEXT, text TEXT NOT NULL, PRIMARY KEY (space, hash));
CREATE VIRTUAL TABLE IF NOT EXISTS occurrence_words USING fts5 (words, tokenize = 'unicode61 remove_diacritics 0');
CREATE TABLE IF NOT EXISTS word_repeats (word TEXT, occurrence INTEGER, extra INTEGER NOT NULL,
    PRIMARY KEY (word, occurrence)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS word_repeats_occurrence ON word_repeats (occurrence);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS occurrences_thread ON occurrences (space, thread_id);
"""
# An index made before private threads had a scope: its Discord thread pictures are treated as
# private (seen from inside the thread and by Manage Threads) rather than risk showing one.
_ADD_PRIVATE = ("ALTER TABLE occurrences ADD COLUMN private INTEGER NOT NULL DEFAULT 0",
                "UPDATE occurrences SET private = 1 WHERE platform = 'discord' AND thread_id IS NOT NULL")
# An index made before message texts were kept: its occurrences have none (and no words row).
_ADD_TEXT = {"message_text": "ALTER TABLE occurrences ADD COLUMN message_text TEXT NOT NULL DEFAULT ''",
             "file_name": "ALTER TABLE occurrences ADD COLUMN file_name TEXT NOT NULL DEFAULT ''"}
# An index made before the word counts were kept (bm25's document lengths and repeated words): they
# are counted once from the words FTS5 holds.
_ADD_WORD_COUNT = "ALTER TABLE occurrences ADD COLUMN word_count INTEGER NOT NULL DEFAULT 0"
_BM25_K1, _BM25_B = 1.2, 0.75  # FTS5's bm25 constants
_OCC_COLUMNS = ("space, channel, message_id, hash, source_id, author_id, author_name, posted_at, permalink, "
                "thread_id, platform, private, message_text, file_name")


@dataclass
class _View:
    """What a search of one (space, model) needs, loaded once per generation."""

    gen: int
    matrix: np.ndarray  # [rows, dim] float16, memory-mapped
    occ_ids: np.ndarray  # occurrence ids, ascending
    occ_rows: np.ndarray  # matrix row of each occurrence's picture
    channels: np.ndarray  # channel code of each occurrence
    authors: np.ndarray
    posted_at: np.ndarray
    channel_codes: dict[str, int]
    author_codes: dict[str, int]
    private: np.ndarray  # bool: posted in a private thread
    threads: np.ndarray  # thread code of each occurrence (-1: none)
    thread_codes: dict[str, int]
    word_counts: np.ndarray  # how many words each occurrence has in `occurrence_words` (bm25's |D|)


class EmbeddedIndex:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        make_dir(self.root / "matrices")
        create_file(self.root / "index.sqlite3")  # 0600, and so SQLite's -wal and -shm files
        self._db = sqlite3.connect(str(self.root / "index.sqlite3"), check_same_thread=False,
                                   isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self._lock = threading.RLock()
        self._views: dict[tuple[str, str], _View] = {}

    def _migrate(self) -> None:
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN IMMEDIATE")  # one process adds the column; the others see it after
        try:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(occurrences)")}
            if "private" not in columns:
                for sql in _ADD_PRIVATE:
                    self._db.execute(sql)
            for column, sql in _ADD_TEXT.items():
                if column not in columns:
                    self._db.execute(sql)
            if "word_count" not in columns:
                self._db.execute(_ADD_WORD_COUNT)
                self._count_words(self._db, self._db.execute("SELECT rowid, words FROM occurrence_words").fetchall())
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.executescript(_INDEXES)

    # ---- writing -------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def missing(self, space_id: str, hashes: list[str], model: str) -> set[str]:
        wanted = set(hashes)
        with self._lock:
            found = {h for (h,) in self._db.execute(
                f"SELECT hash FROM embeddings WHERE space = ? AND model = ? AND hash IN ({_marks(wanted)})",
                (space_id, model, *wanted))} if wanted else set()
        return wanted - found

    def add(self, space_id: str, model: str, embeddings: dict[str, tuple[np.ndarray, bytes | None]],
            occurrences: list[Occurrence], *, texts: dict[str, str] | None = None) -> int:
        with self._write() as db:
            if embeddings:
                self._store_vectors(db, space_id, model, embeddings)
            db.executemany("INSERT OR REPLACE INTO picture_texts (space, hash, text) VALUES (?, ?, ?)",
                           [(space_id, h, t) for h, t in (texts or {}).items()])
            known = {h for (h,) in db.execute(
                f"SELECT DISTINCT hash FROM embeddings WHERE space = ? AND hash IN ({_marks(occurrences)})",
                (space_id, *(o.content_hash for o in occurrences)))} if occurrences else set()
            added = 0
            for occ in occurrences:
                if occ.space_id != space_id or occ.content_hash not in known:
                    raise ValueError(f"occurrence {occ.message_id} has no embedding in space {space_id}")
                cur = db.execute(f"INSERT OR IGNORE INTO occurrences ({_OCC_COLUMNS}) VALUES ({_marks(range(14))})",
                                 _occ_values(occ))
                added += cur.rowcount
            self._store_words(db, space_id, {o.content_hash for o in occurrences} | set(texts or ()))
            self._bump(db, space_id)
        return added

    def _store_words(self, db: sqlite3.Connection, space_id: str, hashes: set[str]) -> None:
        """(Re)write the searchable words of every occurrence of these pictures."""
        if not hashes:
            return
        rows = db.execute(
            "SELECT o.id, coalesce(t.text, ''), o.message_text, o.file_name FROM occurrences o LEFT JOIN picture_texts t "
            f"ON t.space = o.space AND t.hash = o.hash WHERE o.space = ? AND o.hash IN ({_marks(hashes)})",
            (space_id, *hashes)).fetchall()
        words = [(i, searchable(*parts)) for i, *parts in rows]
        db.executemany("INSERT OR REPLACE INTO occurrence_words (rowid, words) VALUES (?, ?)", words)
        db.executemany("DELETE FROM word_repeats WHERE occurrence = ?", [(i,) for i, _ in words])
        self._count_words(db, words)

    @staticmethod
    def _count_words(db: sqlite3.Connection, words: list[tuple[int, str]]) -> None:
        """Keep what bm25 needs beyond FTS5's matches: each occurrence's number of words, and
        the words it has more than once (how many times more)."""
        repeats = []
        for i, text in words:
            seen: dict[str, int] = {}
            for word in text.split():
                seen[word] = seen.get(word, 0) + 1
            repeats += [(w, i, n - 1) for w, n in seen.items() if n > 1]
        db.executemany("UPDATE occurrences SET word_count = ? WHERE id = ?", [(len(t.split()), i) for i, t in words])
        db.executemany("INSERT OR REPLACE INTO word_repeats (word, occurrence, extra) VALUES (?, ?, ?)", repeats)

    def _store_vectors(self, db: sqlite3.Connection, space_id: str, model: str,
                       embeddings: dict[str, tuple[np.ndarray, bytes | None]]) -> None:
        dim = len(next(iter(embeddings.values()))[0])
        path, rows = self._matrix(db, space_id, model, dim)
        free = [r for (r,) in db.execute("SELECT row FROM free_rows WHERE space = ? AND model = ? ORDER BY row",
                                         (space_id, model))]
        with open(path if path.exists() else create_file(path), "r+b") as file:
            for content_hash, (vector, thumbnail) in embeddings.items():
                if len(vector) != dim:
                    raise ValueError(f"embedding of {content_hash} has {len(vector)} dims, not {dim}")
                old = db.execute("SELECT row FROM embeddings WHERE space = ? AND hash = ? AND model = ?",
                                 (space_id, content_hash, model)).fetchone()
                if old:
                    row = old[0]
                elif free:
                    row = free.pop(0)
                    db.execute("DELETE FROM free_rows WHERE space = ? AND model = ? AND row = ?", (space_id, model, row))
                else:
                    row, rows = rows, rows + 1
                file.seek(row * dim * 2)
                file.write(unit(vector).astype(np.float16).tobytes())
                db.execute("INSERT OR REPLACE INTO embeddings (space, hash, model, row) VALUES (?, ?, ?, ?)",
                           (space_id, content_hash, model, row))
                self._drop_embeddings(db, space_id, content_hash, keep_model=model)
                if thumbnail is not None:
                    db.execute("INSERT OR REPLACE INTO thumbnails (space, hash, data) VALUES (?, ?, ?)",
                               (space_id, content_hash, thumbnail))
            file.flush()
        db.execute("UPDATE matrices SET rows = ? WHERE space = ? AND model = ?", (rows, space_id, model))

    def _matrix(self, db: sqlite3.Connection, space_id: str, model: str, dim: int) -> tuple[Path, int]:
        row = db.execute("SELECT file, dim, rows FROM matrices WHERE space = ? AND model = ?",
                         (space_id, model)).fetchone()
        if row is None:
            name = hashlib.sha256(f"{space_id}\0{model}".encode()).hexdigest()[:24] + ".f16"
            db.execute("INSERT INTO matrices (space, model, file, dim, rows) VALUES (?, ?, ?, ?, 0)",
                       (space_id, model, name, dim))
            return self.root / "matrices" / name, 0
        if row[1] != dim:
            raise ValueError(f"model {model} made {row[1]}-d embeddings before, now {dim}-d")
        return self.root / "matrices" / row[0], row[2]

    def _drop_embeddings(self, db: sqlite3.Connection, space_id: str, content_hash: str,
                         keep_model: str | None = None) -> None:
        """Forget a picture's embeddings (all, or all but `keep_model`): zero and free their rows."""
        for model, row in db.execute("SELECT model, row FROM embeddings WHERE space = ? AND hash = ? AND model IS NOT ?",
                                     (space_id, content_hash, keep_model)).fetchall():
            info = db.execute("SELECT file, dim FROM matrices WHERE space = ? AND model = ?", (space_id, model)).fetchone()
            with open(self.root / "matrices" / info[0], "r+b") as file:
                file.seek(row * info[1] * 2)
                file.write(bytes(info[1] * 2))  # a deleted picture's embedding does not linger on disk
            db.execute("INSERT OR IGNORE INTO free_rows (space, model, row) VALUES (?, ?, ?)", (space_id, model, row))
            db.execute("DELETE FROM embeddings WHERE space = ? AND hash = ? AND model = ?", (space_id, content_hash, model))

    def _bump(self, db: sqlite3.Connection, space_id: str) -> None:
        db.execute("INSERT INTO generations (space, gen) VALUES (?, 1) "
                   "ON CONFLICT (space) DO UPDATE SET gen = gen + 1", (space_id,))

    # ---- removing ------------------------------------------------------------------------
    def remove_message(self, space_id: str, message_id: str, *, channel_id: str | None = None,
                       source_ids: tuple[str, ...] = ()) -> int:
        sql, args = "space = ? AND message_id = ?", [space_id, message_id]
        if channel_id is not None:
            sql, args = sql + " AND channel = ?", args + [channel_id]
        if source_ids:
            sql, args = sql + f" AND source_id IN ({_marks(source_ids)})", args + list(source_ids)
        return self._remove_where(sql, args)

    def remove_channel(self, space_id: str, channel_id: str) -> int:
        return self._remove_where("space = ? AND (channel = ? OR thread_id = ?)", [space_id, channel_id, channel_id])

    def expire(self, before: float) -> int:
        return self._remove_where("posted_at < ?", [before])

    def _remove_where(self, where: str, args: list) -> int:
        with self._write() as db:
            gone = db.execute(f"SELECT DISTINCT space, hash FROM occurrences WHERE {where}", args).fetchall()
            db.execute(f"DELETE FROM occurrence_words WHERE rowid IN (SELECT id FROM occurrences WHERE {where})", args)
            db.execute(f"DELETE FROM word_repeats WHERE occurrence IN (SELECT id FROM occurrences WHERE {where})", args)
            removed = db.execute(f"DELETE FROM occurrences WHERE {where}", args).rowcount
            for space_id, content_hash in gone:
                if not db.execute("SELECT 1 FROM occurrences WHERE space = ? AND hash = ? LIMIT 1",
                                  (space_id, content_hash)).fetchone():
                    self._drop_embeddings(db, space_id, content_hash)
                    db.execute("DELETE FROM thumbnails WHERE space = ? AND hash = ?", (space_id, content_hash))
                    db.execute("DELETE FROM picture_texts WHERE space = ? AND hash = ?", (space_id, content_hash))
            for space_id in {s for s, _ in gone}:
                self._bump(db, space_id)
        return removed

    # ---- reading -------------------------------------------------------------------------
    def search(self, space_id: str, model: str, vector: np.ndarray, where: Filter, *, k: int,
               offset: int = 0) -> list[Hit]:
        view = self._view(space_id, model)
        if view is None or k <= 0:
            return []
        candidates = np.nonzero(self._allowed(view, space_id, where))[0]
        want = min(k + offset, len(candidates))
        if want <= offset:
            return []
        scores = _scores(view.matrix, unit(vector), view.occ_rows[candidates])
        top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
        # best first; equal scores (the same picture posted twice): newest first
        order = top[np.lexsort((-view.posted_at[candidates[top]], -scores[top]))][offset:want]
        ids = [int(view.occ_ids[candidates[i]]) for i in order]
        found = self._occurrences_by_id(ids)
        return [Hit(found[i], float(scores[j])) for i, j in zip(ids, order) if i in found]

    def text_search(self, space_id: str, model: str, words: list[str], where: Filter, *, k: int) -> list[Occurrence]:
        view = self._view(space_id, model)
        if view is None or k <= 0 or not words:
            return []
        if not len(view.occ_ids):
            return []
        with self._lock:
            postings, rows, tokens = self._postings(words)
        matches = np.unique(np.concatenate([docs for docs, _, _ in postings.values()]))
        if not len(matches) or not rows:
            return []
        at = np.minimum(np.searchsorted(view.occ_ids, matches), len(view.occ_ids) - 1)
        keep = (view.occ_ids[at] == matches) & self._allowed(view, space_id, where)[at]
        at = at[keep]
        bm25 = _bm25(view.occ_ids[at], view.word_counts[at], words, postings, rows, tokens)
        found = [int(i) for i in view.occ_ids[at[np.lexsort((-view.posted_at[at], bm25))[:k]]]]
        by_id = self._occurrences_by_id(found)
        return [by_id[i] for i in found if i in by_id]

    def _postings(self, words: list[str]) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], int, int]:
        """What bm25 needs from the whole FTS5 table, counted as `bm25()` counts: per word its
        matching rowids (ascending) and the rowids where it is repeated with how many times more;
        the table's row and token counts."""
        block = self._db.execute("SELECT block FROM occurrence_words_data WHERE id = 1").fetchone()
        rows, tokens = _varints(block[0])[:2] if block else (0, 0)
        postings = {}
        for word in dict.fromkeys(words):
            listed = self._db.execute("SELECT group_concat(rowid) FROM (SELECT rowid FROM occurrence_words WHERE "
                                      "occurrence_words MATCH ? ORDER BY rowid)", (fts_any([word]),)).fetchone()[0]
            repeated, extra = self._db.execute(
                "SELECT group_concat(occurrence), group_concat(extra) FROM (SELECT occurrence, extra FROM word_repeats "
                "WHERE word = ? ORDER BY occurrence)", (word,)).fetchone()
            postings[word] = (_numbers(listed, np.int64), _numbers(repeated, np.int64), _numbers(extra, np.float64))
        return postings, rows, tokens

    def _matching(self, space_id: str, query: str) -> np.ndarray:
        """Ids of the space's occurrences whose words match an FTS5 query."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.id FROM occurrence_words JOIN occurrences o ON o.id = occurrence_words.rowid "
                "WHERE occurrence_words MATCH ? AND o.space = ?", (query, space_id)).fetchall()
        return np.array([r[0] for r in rows], np.int64)

    def _allowed(self, view: _View, space_id: str, where: Filter) -> np.ndarray:
        mask = _mask(view, where)
        if where.text:
            mask &= np.isin(view.occ_ids, self._matching(space_id, fts_phrases(where.text)))
        return mask

    def texts(self, space_id: str, hashes: list[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        with self._lock:
            return dict(self._db.execute(f"SELECT hash, text FROM picture_texts WHERE space = ? AND hash IN "
                                         f"({_marks(wanted)})", (space_id, *wanted)).fetchall())

    def _view(self, space_id: str, model: str) -> _View | None:
        with self._lock:
            gen_row = self._db.execute("SELECT gen FROM generations WHERE space = ?", (space_id,)).fetchone()
            cached = self._views.get((space_id, model))
            if gen_row is None:
                return None
            if cached is not None and cached.gen == gen_row[0]:
                return cached
            self._db.execute("BEGIN")  # one snapshot: matrix size, occurrences and generation agree
            try:
                view = self._load_view(space_id, model)
            finally:
                self._db.execute("COMMIT")
            self._views[(space_id, model)] = view
            return view

    def _load_view(self, space_id: str, model: str) -> _View:
        info = self._db.execute("SELECT file, dim, rows FROM matrices WHERE space = ? AND model = ?",
                                (space_id, model)).fetchone()
        gen = self._db.execute("SELECT gen FROM generations WHERE space = ?", (space_id,)).fetchone()[0]
        if info is None or info[2] == 0:
            return _View(gen, np.zeros((0, 1), np.float16), *(np.zeros(0, np.int64),) * 5, {}, {},
                         np.zeros(0, bool), np.zeros(0, np.int32), {}, np.zeros(0, np.int64))
        rows = self._db.execute(
            "SELECT o.id, e.row, o.channel, o.author_id, o.posted_at, o.private, o.thread_id, o.word_count "
            "FROM occurrences o "
            "JOIN embeddings e ON e.space = o.space AND e.hash = o.hash AND e.model = ? WHERE o.space = ? "
            "ORDER BY o.id",  # sorted: text matches find their rows by binary search
            (model, space_id)).fetchall()
        matrix = np.memmap(self.root / "matrices" / info[0], dtype=np.float16, mode="c", shape=(info[2], info[1]))
        ids, occ_rows, channels, authors, posted, private, threads, counts = zip(*rows) if rows else ((),) * 8
        channel_codes = {c: i for i, c in enumerate(sorted(set(channels)))}
        author_codes = {a: i for i, a in enumerate(sorted(set(authors)))}
        thread_codes = {t: i for i, t in enumerate(sorted({t for t in threads if t is not None}))}
        return _View(
            gen, matrix, np.array(ids, np.int64), np.array(occ_rows, np.int64),
            np.array([channel_codes[c] for c in channels], np.int32),
            np.array([author_codes[a] for a in authors], np.int32),
            np.array(posted, np.float64), channel_codes, author_codes,
            np.array(private, bool), np.array([thread_codes.get(t, -1) for t in threads], np.int32), thread_codes,
            np.array(counts, np.int64),
        )

    def _occurrences_by_id(self, ids: list[int]) -> dict[int, Occurrence]:
        if not ids:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT id, {_OCC_COLUMNS} FROM occurrences WHERE id IN ({_marks(ids)})",
                                    ids).fetchall()
        return {row[0]: _occ(row[1:]) for row in rows}

    def occurrences(self, space_id: str, message_id: str, channel_id: str | None = None) -> list[Occurrence]:
        sql, args = "space = ? AND message_id = ?", [space_id, message_id]
        if channel_id is not None:
            sql, args = sql + " AND channel = ?", args + [channel_id]
        with self._lock:
            rows = self._db.execute(f"SELECT {_OCC_COLUMNS} FROM occurrences WHERE {sql} ORDER BY id", args).fetchall()
        return [_occ(r) for r in rows]

    def author_ids(self, space_id: str, names: list[str]) -> set[str]:
        if not any(names):
            return set()
        with self._lock:  # a space has few authors
            rows = self._db.execute("SELECT DISTINCT author_id, author_name FROM occurrences WHERE space = ?",
                                    (space_id,)).fetchall()
        return authors_named(rows, names)

    def embedding(self, space_id: str, content_hash: str, model: str) -> np.ndarray | None:
        return self.embeddings(space_id, [content_hash], model).get(content_hash)

    def embeddings(self, space_id: str, hashes: list[str], model: str) -> dict[str, np.ndarray]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        with self._lock:
            info = self._db.execute("SELECT file, dim FROM matrices WHERE space = ? AND model = ?",
                                    (space_id, model)).fetchone()
            rows = self._db.execute(f"SELECT hash, row FROM embeddings WHERE space = ? AND model = ? "
                                    f"AND hash IN ({_marks(wanted)})", (space_id, model, *wanted)).fetchall()
        if info is None or not rows:
            return {}
        matrix = np.memmap(self.root / "matrices" / info[0], dtype=np.float16, mode="r").reshape(-1, info[1])
        # one gather into a plain array: rows sliced off a memmap are memmaps, slow to compute with
        vectors = np.asarray(matrix[np.array([row for _, row in rows])], dtype=np.float32)
        return {h: vector for (h, _), vector in zip(rows, vectors)}

    def thumbnails(self, space_id: str, hashes: list[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(hashes))
        if not wanted:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT hash, data FROM thumbnails WHERE space = ? AND hash IN ({_marks(wanted)})",
                                    (space_id, *wanted)).fetchall()
        return {h: bytes(d) for h, d in rows}

    def stale(self, model: str, limit: int) -> list[tuple[str, str]]:
        with self._lock:
            return [tuple(r) for r in self._db.execute(
                "SELECT DISTINCT o.space, o.hash FROM occurrences o WHERE NOT EXISTS (SELECT 1 FROM embeddings e "
                "WHERE e.space = o.space AND e.hash = o.hash AND e.model = ?) LIMIT ?", (model, limit))]

    def stats(self, space_id: str, model: str) -> SpaceStats:
        with self._lock:
            embeddings = self._db.execute("SELECT COUNT(*) FROM embeddings WHERE space = ? AND model = ?",
                                          (space_id, model)).fetchone()[0]
            by_channel = dict(self._db.execute(
                "SELECT CASE WHEN private THEN thread_id ELSE channel END AS scope, COUNT(*) FROM occurrences "
                "WHERE space = ? GROUP BY scope", (space_id,)).fetchall())
            stale = self._db.execute(
                "SELECT COUNT(DISTINCT o.hash) FROM occurrences o WHERE o.space = ? AND NOT EXISTS (SELECT 1 FROM "
                "embeddings e WHERE e.space = o.space AND e.hash = o.hash AND e.model = ?)", (space_id, model)).fetchone()[0]
        return SpaceStats(embeddings, sum(by_channel.values()), len(by_channel), stale, by_channel)

    def close(self) -> None:
        with self._lock:
            self._views.clear()
            self._db.close()


def _mask(view: _View, where: Filter) -> np.ndarray:
    mask = np.ones(len(view.occ_ids), dtype=bool)
    if where.channels is not None:
        codes = [view.channel_codes[c] for c in where.channels if c in view.channel_codes]
        mask &= np.isin(view.channels, np.array(codes, np.int32))
    if where.authors is not None:
        codes = [view.author_codes[a] for a in where.authors if a in view.author_codes]
        mask &= np.isin(view.authors, np.array(codes, np.int32))
    if where.private_scopes is not None:  # a private thread's pictures: for who may see the thread
        channels = [view.channel_codes[c] for c in where.private_scopes if c in view.channel_codes]
        threads = [view.thread_codes[t] for t in where.private_scopes if t in view.thread_codes]
        mask &= ~view.private | np.isin(view.channels, np.array(channels, np.int32)) \
            | np.isin(view.threads, np.array(threads, np.int32))
    if where.after is not None:
        mask &= view.posted_at >= where.after
    if where.before is not None:
        mask &= view.posted_at < where.before
    return mask


def _bm25(ids: np.ndarray, lengths: np.ndarray, words: list[str],
          postings: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], rows: int, tokens: int) -> np.ndarray:
    """FTS5's bm25 of the occurrences `ids` (ascending, with their word counts) for the query
    `fts_any(words)`, as `bm25()` computes it (fts5_aux.c, fts5Bm25Function): per query phrase
    in order, IDF = ln((N - n + 0.5) / (n + 0.5)) (1e-6 where <= 0) over the table's N rows and the
    n matching the word, times f·(k1 + 1) / (f + k1·(1 - b + b·|D| / avgdl)); negated, lower is better."""
    avgdl = tokens / rows
    score = np.zeros(len(ids), np.float64)
    for word in words:
        docs, repeated, extra = postings[word]
        idf = math.log((rows - len(docs) + 0.5) / (len(docs) + 0.5))
        if idf <= 0.0:
            idf = 1e-6
        at = np.minimum(np.searchsorted(docs, ids), max(len(docs) - 1, 0))
        freq = (docs[at] == ids).astype(np.float64) if len(docs) else np.zeros(len(ids))
        if len(repeated):
            where = np.minimum(np.searchsorted(repeated, ids), len(repeated) - 1)
            freq += np.where((repeated[where] == ids) & (freq > 0), extra[where], 0.0)
        score = score + idf * ((freq * (_BM25_K1 + 1.0)) / (freq + _BM25_K1 * (1 - _BM25_B + _BM25_B * lengths / avgdl)))
    return -score


def _numbers(listed: str | None, dtype: type) -> np.ndarray:
    """A group_concat of numbers as an array: one string per query word, not a row object per match."""
    return np.fromstring(listed, dtype, sep=",") if listed else np.zeros(0, dtype)


def _varints(data: bytes) -> list[int]:
    """SQLite's varints (1-9 bytes, big-endian, 7 bits a byte and 8 in a ninth): FTS5's averages
    record is the table's row count, then its token count per column."""
    out, i = [], 0
    while i < len(data):
        value = 0
        for j in range(9):
            byte = data[i]
            i += 1
            if j == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        out.append(value)
    return out


def _scores(matrix: np.ndarray, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine scores of matrix[rows] against a unit query, in float32."""
    if len(rows) == 0:
        return np.zeros(0, np.float32)
    try:
        import torch  # its float16 matrix-vector product is ~20x numpy's; workers have torch anyway
    except ImportError:  # pragma: no cover - the bot-only install never searches
        return (matrix[rows].astype(np.float32) @ query).astype(np.float32)
    m = torch.from_numpy(matrix)
    q = torch.from_numpy(query.astype(np.float16))
    if len(rows) * 8 < len(matrix):  # few candidates: gather them instead of scanning the space
        return (m[torch.from_numpy(rows)] @ q).float().numpy()
    return (m @ q).float().numpy()[rows]


def _marks(items) -> str:
    return ", ".join("?" * len(list(items)))


def _occ_values(occ: Occurrence) -> tuple:
    return (occ.space_id, occ.channel_id, occ.message_id, occ.content_hash, occ.source_id, occ.author_id,
            occ.author_name, occ.posted_at, occ.permalink, occ.thread_id, occ.platform, int(occ.private),
            occ.message_text, occ.file_name)


def _occ(row) -> Occurrence:
    return Occurrence(space_id=row[0], channel_id=row[1], message_id=row[2], content_hash=row[3], source_id=row[4],
                      author_id=row[5], author_name=row[6], posted_at=row[7], permalink=row[8], thread_id=row[9],
                      platform=row[10], private=bool(row[11]), message_text=row[12] or "", file_name=row[13] or "")
