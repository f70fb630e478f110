"""/describe's vocabulary (light: no torch): plain text files, one term per line, one file per kind.

The shipped files live in `plugins/describe/vocab/`; an admin adds terms with files of the same
names in the vocabulary folder (`CLIPBOT_DESCRIBE_VOCAB_DIR`, by default `<data dir>/describe/vocab`).
Lines starting with `#` are comments. A term is read exactly as a prompt will say it, except
artists, which prompts say as "by NAME" (and which are ranked that way).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SHIPPED_DIR = Path(__file__).parent / "vocab"
# The kinds, in the order prompts name them (and `terms` lists them).
KINDS = ("subjects", "mediums", "styles", "artists", "lighting", "colours", "framing")
MAX_TERM_CHARS = 60
# `|` separates /imagine prompts and `text:2` is a weight: a term holding either would change the
# prompt it lands in, so such lines are skipped.
_UNSAFE = re.compile(r"\||:\s*-?[\d.]+\s*$")


@dataclass(frozen=True)
class Vocabulary:
    """Every term by kind, de-duplicated (case-insensitively), shipped terms first."""

    terms: dict[str, tuple[str, ...]]

    def entries(self) -> list[tuple[str, str]]:
        """(kind, term) for every term, kinds in prompt order: the ranking's columns."""
        return [(kind, term) for kind in KINDS for term in self.terms.get(kind, ())]


def phrase(kind: str, term: str) -> str:
    """How a prompt says a term (and what CLIP compares with the picture)."""
    return f"by {term}" if kind == "artists" else term


def load_vocabulary(extra_dir: Path | None = None) -> Vocabulary:
    """The shipped vocabulary plus the terms of `extra_dir`'s `<kind>.txt` files, where it exists.
    Files of other names there are ignored (logged): a typo must not stop /describe."""
    terms: dict[str, list[str]] = {kind: read_terms(SHIPPED_DIR / f"{kind}.txt") for kind in KINDS}
    if extra_dir is not None and Path(extra_dir).is_dir():
        for path in sorted(Path(extra_dir).glob("*.txt")):
            if path.stem not in terms:
                log.warning("vocabulary file %s ignored: its name is not one of %s", path, ", ".join(KINDS))
                continue
            terms[path.stem] += read_terms(path)
    return Vocabulary({kind: _unique(found) for kind, found in terms.items()})


def read_terms(path: Path) -> list[str]:
    """The terms of one file: whitespace tidied; comments, blank, too long or unsafe lines skipped."""
    found = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        term = " ".join(raw.split())
        if not term or term.startswith("#"):
            continue
        if len(term) > MAX_TERM_CHARS or _UNSAFE.search(term):
            log.warning("%s line %d skipped: a term is one phrase of up to %d characters, without | or a "
                        ":weight", path, number, MAX_TERM_CHARS)
            continue
        found.append(term)
    return found


def _unique(terms: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    kept = []
    for term in terms:
        if term.lower() not in seen:
            seen.add(term.lower())
            kept.append(term)
    return tuple(kept)
