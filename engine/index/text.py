"""The words of the image index's full-text side, the same for both backends (light: no numpy).

What is searchable about an occurrence: the words read on its picture (OCR), its message's
text and its file name. Both backends are handed the same normalised words (`searchable`):
case-folded runs of letters and digits, so "Whiteboard.JPG" and "whiteboard jpg" are the same
words in SQLite FTS5 (unicode61 tokenizer, no diacritic folding) and in PostgreSQL (the
`simple` text search configuration: no stemming, no stop words, so every language is treated
alike). Queries are built here too, from the same tokens, so neither backend ever parses
user text as query syntax.
"""

from __future__ import annotations

import re

__all__ = ["STOP_WORDS", "fts_any", "fts_phrases", "query_words", "searchable", "tokens", "ts_any", "ts_phrases"]

_WORD = re.compile(r"[^\W_]+")
# Words too common to rank by (English, the bundled OCR model's and most teams' language): a
# query "the design review whiteboard" ranks by design, review, whiteboard. A phrase filter
# (`text:"..."`) keeps them: it matches the words in order, as typed.
STOP_WORDS = frozenset("""a an and are as at be by for from has have in is it its of on or that the this to was
were will with""".split())


def tokens(text: str) -> list[str]:
    """The words of `text`, case-folded, in order."""
    return _WORD.findall((text or "").casefold())


def searchable(*parts: str) -> str:
    """The text a backend indexes for these parts: their words, space separated."""
    return " ".join(word for part in parts for word in tokens(part))


def query_words(texts: list[str]) -> list[str]:
    """The distinct words of query texts to rank by (stop words dropped unless nothing else is left)."""
    words = list(dict.fromkeys(word for text in texts for word in tokens(text)))
    kept = [w for w in words if w not in STOP_WORDS]
    return kept or words


def fts_any(words: list[str]) -> str:
    """An SQLite FTS5 query matching any of `words` (each quoted: never FTS syntax)."""
    return " OR ".join(f'"{w}"' for w in words)


def fts_phrases(phrases: tuple[str, ...]) -> str:
    """An FTS5 query matching every phrase, each its words in order."""
    return " AND ".join('"' + " ".join(tokens(p)) + '"' for p in phrases)


def ts_any(words: list[str]) -> str:
    """A PostgreSQL `to_tsquery('simple', ...)` text matching any of `words`."""
    return " | ".join(_quoted(w) for w in words)


def ts_phrases(phrases: tuple[str, ...]) -> str:
    """A `to_tsquery('simple', ...)` text matching every phrase, each its words adjacent and in order."""
    return " & ".join("(" + " <-> ".join(_quoted(w) for w in tokens(p)) + ")" for p in phrases)


def _quoted(word: str) -> str:
    return "'" + word.replace("'", "''") + "'"  # tokens() never yields quotes; quoting keeps it that way
