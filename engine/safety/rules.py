"""The rules a prompt and a picture are held to, as data (light: no torch).

A blocklist entry is a word or phrase, optionally named: `gore=decapitated` (rule "gore"), or
just `decapitated` (rule "blocklist"). Matching is on word boundaries, blind to case, accents
(NFKD, combining marks dropped, casefold) and simple leetspeak (`n00d` reads `nood`), so
"Décapité" matches "decapite" and "S3X" matches "sex", but "Essex" does not match "sex".

A concept is what an embedding is compared with: a text (embedded with the CLIP text tower) or
an example picture (its image embedding), with its own cosine threshold. Given as JSON
(`[{"name": "gore", "text": "a gory photo", "threshold": 0.26}]`, or `"image": "/path.png"`) or as
a `TEXT=THRESHOLD` list (`nudity=0.27, /srv/examples/bad.png=0.9`: a path to an image file is a
picture concept named after the file).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError

__all__ = ["Concept", "blocked_rule", "normalize", "parse_blocklist", "parse_concepts", "refusal"]

BLOCKLIST_RULE = "blocklist"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_NOT_WORD = re.compile(r"[^\w]+|_")


def refusal(rule: str) -> str:
    """The one line a refused prompt gets."""
    return f"That prompt is not allowed here (rule: {rule})."


def normalize(text: str, *, leet: bool = True) -> str:
    """`text` as the blocklist reads it: accents dropped, casefolded, leetspeak read as letters,
    runs of anything but letters and digits made one space, padded with a space each side."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    if leet:
        plain = plain.translate(_LEET)
    return " " + " ".join(_NOT_WORD.sub(" ", plain).split()) + " "


def parse_blocklist(entries: list[str]) -> list[tuple[str, str]]:
    """(rule, normalised phrase) for each entry (`phrase` or `rule=phrase`); blank entries go."""
    parsed = []
    for entry in entries:
        rule, _, phrase = entry.partition("=") if "=" in entry else (BLOCKLIST_RULE, "", entry)
        words = normalize(phrase)
        if words.strip():
            parsed.append((rule.strip() or BLOCKLIST_RULE, words))
    return parsed


def blocked_rule(text: str, blocklist: list[tuple[str, str]]) -> str | None:
    """The rule of the first blocklist phrase `text` contains as whole words, or None. The text is
    read both with digits kept and with leetspeak read as letters."""
    readings = {normalize(text), normalize(text, leet=False)}
    for rule, phrase in blocklist:
        if any(phrase in reading for reading in readings):
            return rule
    return None


@dataclass(frozen=True)
class Concept:
    """What embeddings are compared with: a `text` or an example picture (`image`, a file path),
    and the cosine at or above which it matches."""

    name: str
    threshold: float
    text: str = ""
    image: str = ""

    def __post_init__(self) -> None:
        if bool(self.text) == bool(self.image):
            raise ValueError(f"concept {self.name!r} needs a text or an image (one of them)")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"concept {self.name!r}: threshold {self.threshold} is not a cosine (-1 to 1)")


def parse_concepts(value: str) -> list[Concept]:
    """Concepts from a setting's text: a JSON list, or `TEXT=THRESHOLD, ...`. ValueError says what
    is wrong (settings show it as one line at start-up)."""
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            items = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"concepts: not valid JSON ({exc.msg})") from None
        return [_concept_from_json(item) for item in items]
    return [_concept_from_pair(item) for item in value.split(",") if item.strip()]


def _concept_from_json(item: object) -> Concept:
    if not isinstance(item, dict) or "threshold" not in item:
        raise ValueError('concepts: each JSON item needs "threshold" and "text" or "image"')
    text, image = str(item.get("text") or ""), str(item.get("image") or "")
    name = str(item.get("name") or text or Path(image).stem)
    return Concept(name=name, threshold=float(item["threshold"]), text=text, image=image)


def _concept_from_pair(item: str) -> Concept:
    what, sep, threshold = item.strip().rpartition("=")
    if not sep or not what.strip():
        raise ValueError(f"concepts: {item.strip()!r} is not TEXT=THRESHOLD")
    try:
        cosine = float(threshold)
    except ValueError:
        raise ValueError(f"concepts: {threshold!r} in {item.strip()!r} is not a number") from None
    what = what.strip()
    if what.lower().endswith(_IMAGE_SUFFIXES) and ("/" in what or "\\" in what):
        return Concept(name=Path(what).stem, threshold=cosine, image=what)
    return Concept(name=what, threshold=cosine, text=what)


def check_prompt_words(text: str, blocklist: list[tuple[str, str]]) -> None:
    """Raise the refusal line when `text` contains a blocklisted phrase."""
    rule = blocked_rule(text, blocklist)
    if rule is not None:
        raise UserError(refusal(rule))
