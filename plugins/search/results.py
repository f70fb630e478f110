"""What the /search tasks answer, typed (light: no torch, no numpy). Tasks return these; the
handlers decode the jobs' JSON back into them (`engine.wire`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.wire import Wire


@dataclass(frozen=True)
class Hit(Wire):
    """One picture found: where it was posted, by whom, and how well it matches (cosine).
    `similar`: near-duplicates collapsed into it; `weak`: below the space's relevance cut-off."""

    message_id: str
    channel: str
    author: str
    score: float
    author_name: str = ""
    permalink: str = ""
    posted_at: float | None = None
    thread_id: str | None = None
    text: str = ""  # words read on the picture: the lines that matched the query, else the first ones
    message_text: str = ""  # the text of the message it was posted with
    file_name: str = ""
    text_match: bool = False  # its words (picture, message, file name) matched the query's
    similar: int = 0
    weak: bool = False

    def public(self) -> dict[str, object]:
        """The fields `--json` and `Reply.data` show for a result."""
        return {"message_id": self.message_id, "channel": self.channel, "author": self.author,
                "score": self.score, "permalink": self.permalink, "text": self.text,
                "message_text": self.message_text, "file_name": self.file_name, "similar": self.similar,
                "weak": self.weak}


@dataclass(frozen=True)
class SearchPage(Wire):
    """One page of results, best first; `sheet` is the blob key of their contact sheet (None when
    there are none), `vector_ref` names the query vector for "More" and "Like". `more`: there are
    results after this page; `cutoff`: the space's relevance cut-off (None: not calibrated);
    `unknown_authors`: `from:` names that match nobody who posted in the searched channels."""

    results: tuple[Hit, ...]
    sheet: str | None
    model: str
    vector_ref: str
    meaningless: bool = False
    reindexing: bool = False
    more: bool = False
    cutoff: float | None = None
    unknown_authors: tuple[str, ...] = ()


@dataclass(frozen=True)
class Indexed(Wire):
    """One indexing batch: occurrences added, new embeddings computed, pictures that could not be read."""

    indexed: int = 0
    embedded: int = 0
    skipped: int = 0
    batch: int = 0
    read: int = 0  # new pictures whose text was read (OCR)


@dataclass(frozen=True)
class Drained(Wire):
    """What one drain job did over its batches."""

    indexed: int = 0
    embedded: int = 0
    skipped: int = 0
    batches: int = 0
    read: int = 0


@dataclass(frozen=True)
class Removed(Wire):
    removed: int


@dataclass(frozen=True)
class IndexStats(Wire):
    """A space's index under the current model; `by_channel`: occurrences per channel (or thread)."""

    model: str
    embeddings: int
    occurrences: int
    channels: int
    stale: int
    by_channel: dict[str, int]


@dataclass(frozen=True)
class Reembedded(Wire):
    reembedded: int
