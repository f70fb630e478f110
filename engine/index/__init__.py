"""The image index: CLIP embeddings of posted pictures, where each was posted, and a thumbnail.

One picture (content hash) has one embedding per model and any number of *occurrences* (the
messages it was posted in). Searches filter occurrences by space, readable channels, private
thread, author and date INSIDE the query, so a caller never sees what it may not read, and k
results come back even when most of the index is filtered out.

An occurrence's `channel_id` is the channel (a thread's parent on Discord). One posted in a
private thread is `private`: its scope is the thread (`thread_id`), and a search shows it only
when its filter names that thread, or the parent channel (someone who sees all its private
threads), in `private_scopes`. A thread that goes (`remove_channel` with the thread's id) takes
its occurrences along.

Two backends share the `ImageIndex` protocol (and one test suite):
  - `EmbeddedIndex` (default): SQLite for metadata + an exact cosine scan over a float16
    matrix file per (space, model), memory-mapped; fast to ~100k pictures per space;
  - `PgVectorIndex`: PostgreSQL + pgvector (HNSW, iterative scans), for `CLIPBOT_INDEX_URL=postgresql://...`.

Embeddings carry the model fingerprint that made them: a search with another model does
not see them, and `stale()` lists what needs re-embedding.

Full text (`engine.index.text`): a picture's OCR text is stored with it (once per picture), an
occurrence's message text and file name with the occurrence; `text_search` ranks occurrences
by those words (SQLite FTS5 bm25, PostgreSQL `ts_rank_cd` over a GIN-indexed tsvector), and a
`Filter.text` phrase keeps only occurrences whose words contain it, inside the query as ever.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

import numpy as np

if TYPE_CHECKING:
    from engine.settings import EngineSettings

__all__ = ["Filter", "Hit", "ImageIndex", "Occurrence", "SpaceStats", "open_index", "process_index"]

_opened: dict[tuple, "ImageIndex"] = {}
_opened_lock = threading.Lock()


@dataclass(frozen=True)
class Occurrence:
    """One posting of a picture: where, by whom, when, and the hash of its bytes."""

    space_id: str
    channel_id: str
    message_id: str
    content_hash: str
    source_id: str = ""  # platform file id; "" when the message has one picture or none is known
    author_id: str = ""
    author_name: str = ""
    posted_at: float = 0.0
    permalink: str = ""
    thread_id: str | None = None
    platform: str = ""
    private: bool = False  # posted in a private thread (`thread_id`): only who may see that thread finds it
    message_text: str = ""  # the message's own text (searchable, shown with results)
    file_name: str = ""  # the picture's file name as posted (searchable)


@dataclass(frozen=True)
class Hit:
    occurrence: Occurrence
    score: float  # cosine similarity, -1..1


@dataclass(frozen=True)
class Filter:
    """What a search may return. `channels=None` means every channel of the space (operator
    CLI only); an empty set means nothing. `private_scopes`: the private threads it may also see,
    by thread id, or by parent channel id for every private thread of that channel; None means
    every private thread of the allowed channels (operator CLI only)."""

    channels: frozenset[str] | None = None
    authors: frozenset[str] | None = None
    after: float | None = None  # posted_at >= after
    before: float | None = None  # posted_at < before
    private_scopes: frozenset[str] | None = None
    text: tuple[str, ...] = ()  # phrases its words must all contain (OCR text, message text, file name)

    def shows_place(self, occ: Occurrence) -> bool:
        """Whether the channel and thread filters allow `occ` (what the index applies in its queries)."""
        if self.channels is not None and occ.channel_id not in self.channels:
            return False
        return not occ.private or self.private_scopes is None or bool(
            {occ.channel_id, occ.thread_id or ""} & self.private_scopes)


@dataclass(frozen=True)
class SpaceStats:
    embeddings: int  # distinct pictures with an embedding of the current model
    occurrences: int
    channels: int
    stale: int  # pictures whose only embedding comes from another model
    by_channel: dict[str, int] = field(default_factory=dict)  # a private thread's count under its thread id


class ImageIndex(Protocol):
    def missing(self, space_id: str, hashes: list[str], model: str) -> set[str]:
        """The hashes among `hashes` with no embedding of `model` in this space."""

    def add(self, space_id: str, model: str, embeddings: dict[str, tuple[np.ndarray, bytes | None]],
            occurrences: list[Occurrence], *, texts: dict[str, str] | None = None) -> int:
        """Store new embeddings ({hash: (unit vector, thumbnail or None to keep the old one)}),
        replacing other models' embeddings of those hashes, and occurrences (each hash must
        have an embedding). `texts`: the words read on pictures ({hash: text}, "" when OCR found
        none), stored with the picture and searchable from all its occurrences. Returns how many
        occurrences were new (duplicates are ignored)."""

    def search(self, space_id: str, model: str, vector: np.ndarray, where: Filter, *, k: int,
               offset: int = 0) -> list[Hit]:
        """Occurrences allowed by `where`, most similar first: ranks offset..offset+k-1."""

    def text_search(self, space_id: str, model: str, words: list[str], where: Filter, *, k: int) -> list[Occurrence]:
        """Up to k occurrences allowed by `where` (and embedded with `model`, as `search` sees them)
        whose OCR text, message text or file name has any of `words` (`engine.index.text.tokens`),
        best text match first."""

    def texts(self, space_id: str, hashes: list[str]) -> dict[str, str]:
        """The OCR text of those pictures that were read ("" when none was found on it)."""

    def occurrences(self, space_id: str, message_id: str, channel_id: str | None = None) -> list[Occurrence]:
        """The indexed pictures of one message."""

    def author_ids(self, space_id: str, names: list[str]) -> set[str]:
        """The ids of the authors in the space whose display name is one of `names` (any case)."""

    def embedding(self, space_id: str, content_hash: str, model: str) -> np.ndarray | None:
        ...

    def embeddings(self, space_id: str, hashes: list[str], model: str) -> dict[str, np.ndarray]:
        """The `model` embeddings of those of `hashes` that have one (float32), by hash."""

    def thumbnails(self, space_id: str, hashes: list[str]) -> dict[str, bytes]:
        ...

    def remove_message(self, space_id: str, message_id: str, *, channel_id: str | None = None,
                       source_ids: tuple[str, ...] = ()) -> int:
        """Drop a message's occurrences (only `source_ids` files when given); pictures no
        longer posted anywhere lose their embeddings and thumbnails. Returns occurrences removed."""

    def remove_channel(self, space_id: str, channel_id: str) -> int:
        """Drop the occurrences of a channel, or of a thread when `channel_id` is a thread's id."""

    def expire(self, before: float) -> int:
        """Drop every occurrence posted before `before` (retention), in every space."""

    def stale(self, model: str, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` (space, hash) pairs with no embedding of `model` (to re-embed)."""

    def stats(self, space_id: str, model: str) -> SpaceStats:
        ...

    def close(self) -> None:
        ...


def authors_named(pairs: Iterable[tuple[str, str]], names: Iterable[str]) -> set[str]:
    """The author ids of (author_id, author_name) pairs whose name is one of `names`, case folded
    in Python (non-ASCII names too; SQL's lower() is ASCII-only in SQLite)."""
    folded = {n.casefold() for n in names if n}
    return {author for author, name in pairs if name and name.casefold() in folded}


def process_index(settings: "EngineSettings") -> "ImageIndex":
    """This process's ImageIndex for the settings, opened once (a forked worker child opens its own)."""
    key = (os.getpid(), settings.index_url or "", str(settings.data_dir))
    with _opened_lock:
        if key not in _opened:
            _opened[key] = open_index(settings.index_url, settings.data_dir)
        return _opened[key]


def open_index(url: str | None, data_dir: Path) -> "ImageIndex":
    """The index `url` names: None/"" = embedded under data_dir/index, `sqlite:///DIR`, or
    `postgresql://...` (needs the `postgres` extra)."""
    from engine.errors import UserError

    if not url:
        from engine.index.embedded import EmbeddedIndex

        return EmbeddedIndex(Path(data_dir) / "index")
    if url.startswith("sqlite:///"):
        from engine.index.embedded import EmbeddedIndex

        return EmbeddedIndex(Path(url[len("sqlite:///"):]).expanduser())
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from engine.index.pgvector import PgVectorIndex
        except ImportError as exc:
            raise UserError(f"CLIPBOT_INDEX_URL names PostgreSQL but its driver is missing ({exc}); "
                            "install clipbot[postgres].") from None
        return PgVectorIndex(url)
    raise UserError("CLIPBOT_INDEX_URL must be empty (embedded), sqlite:///DIR or postgresql://...")


def unit(vector: Any) -> np.ndarray:
    """A float32 unit vector (zero stays zero)."""
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v
