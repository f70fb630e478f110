"""Parsing user-typed label lists and the per-channel named label sets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from engine.errors import UserError

if TYPE_CHECKING:
    from engine.store import Store

MAX_LABEL_CHARS = 100
MAX_EXAMPLES = 10  # example pictures per taught label
DEFAULT_SET = "default"
_SET_NAME = re.compile(r"^[\w-]{1,32}$")


def parse_labels(text: str, *, max_labels: int) -> list[str]:
    """Split 'cat, dog, a red car' into labels: trimmed, de-duplicated (case-insensitively)."""
    parts = [" ".join(part.split()) for part in re.split(r"[,\n;]", text)]
    return check_labels([part for part in parts if part], max_labels=max_labels)


def check_labels(labels: object, *, max_labels: int) -> list[str]:
    """The rules every label list obeys, typed or sent to a task: 2..max_labels non-empty
    strings of up to MAX_LABEL_CHARS characters; whitespace tidied, case-insensitive repeats dropped."""
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise UserError("Labels must be a list of words or phrases.")
    seen: set[str] = set()
    cleaned = []
    for label in (" ".join(raw.split()) for raw in labels):
        if not label:
            raise UserError("One of the labels is empty; give each label some text.")
        if label.lower() not in seen:
            seen.add(label.lower())
            cleaned.append(label)
    too_long = next((lab for lab in cleaned if len(lab) > MAX_LABEL_CHARS), None)
    if too_long:
        raise UserError(f"The label '{too_long[:40]}…' is too long; keep each label under {MAX_LABEL_CHARS} characters.")
    if len(cleaned) > max_labels:
        raise UserError(f"That's {len(cleaned)} labels; the limit is {max_labels}.")
    if len(cleaned) < 2:
        raise UserError("Give at least two labels, separated by commas (e.g. `cat, dog, person`).")
    return cleaned


def check_top(top: object, *, max_top: int) -> int:
    """How many guesses to show: an int from 1 to max_top."""
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= max_top:
        raise UserError(f"top must be between 1 and {max_top}.")
    return top


def check_set_name(name: str) -> str:
    if not _SET_NAME.match(name):
        raise UserError("A label set name is one word of letters, digits, - or _ (up to 32 characters).")
    return name


class LabelSets:
    """Named label sets of one channel, kept in the engine's store, and the image examples of
    the labels taught with `/labels teach` (embeddings, under the model that made them)."""

    def __init__(self, store: "Store", platform: str, channel_id: str) -> None:
        self._store = store
        self._key = f"clipbot:labels:{platform}:{channel_id or '-'}"
        self._taught_key = f"clipbot:labels:taught:{platform}:{channel_id or '-'}"

    def all(self) -> dict[str, list[str]]:
        return self._store.get(self._key) or {}

    def get(self, name: str) -> list[str] | None:
        return self.all().get(name)

    def save(self, name: str, labels: list[str]) -> None:
        sets = self.all()
        sets[check_set_name(name)] = labels
        self._store.set(self._key, sets)
        self._forget_untaught(sets)

    def remove(self, name: str | None) -> bool:
        sets = self.all()
        if name is None:
            self._store.delete(self._key)
            self._store.delete(self._taught_key)
            return bool(sets)
        found = sets.pop(name, None) is not None
        self._store.set(self._key, sets)
        self._forget_untaught(sets)
        return found

    def teach(self, name: str, label: str, model: str, vectors: list[str]) -> list[str]:
        """Add `label` to set `name` (made if new) with its example embeddings, replacing earlier
        examples of that label; returns the set's labels."""
        sets = self.all()
        labels = list(sets.get(check_set_name(name)) or [])
        if label.casefold() not in {existing.casefold() for existing in labels}:
            labels.append(label)
        sets[name] = labels
        taught = self.taught()
        taught[label.casefold()] = {"label": label, "model": model, "vectors": list(vectors)}
        self._store.set(self._taught_key, taught)
        self._store.set(self._key, sets)
        return labels

    def taught(self) -> dict[str, dict]:
        """{casefolded label: {"label", "model", "vectors"}} of this channel's taught labels."""
        return self._store.get(self._taught_key) or {}

    def examples_for(self, labels: list[str]) -> dict[str, dict]:
        """The taught examples of those of `labels` that have some, by label ({"model", "vectors"})."""
        taught = self.taught()
        return {label: {"model": taught[label.casefold()]["model"], "vectors": taught[label.casefold()]["vectors"]}
                for label in labels if label.casefold() in taught}

    def _forget_untaught(self, sets: dict[str, list[str]]) -> None:
        """Drop the examples of labels no set has any more."""
        taught = self.taught()
        kept = {label.casefold() for labels in sets.values() for label in labels}
        left = {k: v for k, v in taught.items() if k in kept}
        if left != taught:
            self._store.set(self._taught_key, left)
