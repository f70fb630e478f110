"""Four /imagine prompts from the best terms of each kind (light: no torch).

Each candidate takes, for each kind, the term at a given rank (0 = best; a kind with fewer terms
gives its last). A prompt reads "MEDIUM of SUBJECT, STYLE, by ARTIST, LIGHTING, COLOUR, FRAMING".
Every prompt must fit in its **Imagine this** button, which carries the whole `/imagine` command
(data in buttons, so they survive restarts): Discord's 100-character custom_id is the binding
limit, so kinds are added most telling first (subject, medium, style, artist, ...) while
the prompt still fits.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from bot.actions import DISCORD_LIMIT, encode_action
from bot.commands import Action

IMAGINE = "imagine"
# The best of every kind; the same subject in the runner-up look; the runner-up subject in the
# best look; the third subject, shorter, in a mixed look.
CANDIDATE_RANKS: tuple[Mapping[str, int], ...] = (
    {"subjects": 0, "mediums": 0, "styles": 0, "artists": 0, "lighting": 0, "colours": 0, "framing": 0},
    {"subjects": 0, "mediums": 1, "styles": 1, "artists": 1, "lighting": 1, "colours": 1, "framing": 1},
    {"subjects": 1, "mediums": 0, "styles": 0, "artists": 0, "lighting": 0, "colours": 0, "framing": 0},
    {"subjects": 2, "mediums": 1, "styles": 0, "lighting": 0, "colours": 0},
)
_PRIORITY = ("subjects", "mediums", "styles", "artists", "lighting", "colours", "framing")  # most telling first


def imagine_action(prompt: str, label: str = "Imagine this") -> Action:
    """The button that draws `prompt`: a pre-filled /imagine."""
    return Action(label, IMAGINE, {"prompt": prompt}, style="primary")


def fits_a_button(prompt: str) -> bool:
    try:
        encode_action(imagine_action(prompt), limit=DISCORD_LIMIT)
    except ValueError:
        return False
    return True


def compose(ranked: Mapping[str, Sequence[str]]) -> list[str]:
    """Four prompts from `ranked` (kind -> its terms' phrases, best first)."""
    return [_fitted({kind: _at(ranked.get(kind, ()), rank) for kind, rank in ranks.items()})
            for ranks in CANDIDATE_RANKS]


def _at(phrases: Sequence[str], rank: int) -> str:
    return phrases[min(rank, len(phrases) - 1)] if phrases else ""


def _fitted(parts: dict[str, str]) -> str:
    """The prompt of as many of `parts` as fit a button, the most telling kinds first (a kind
    that does not fit is left out and the next ones are still tried)."""
    kept: dict[str, str] = {}
    for kind in _PRIORITY:
        if parts.get(kind) and fits_a_button(_join({**kept, kind: parts[kind]})):
            kept[kind] = parts[kind]
    if not kept and parts.get("subjects"):
        return _cut(parts["subjects"])
    return _join(kept)


def _join(parts: Mapping[str, str]) -> str:
    subject, medium = parts.get("subjects", ""), parts.get("mediums", "")
    head = f"{medium} of {subject}" if medium and subject else medium or subject
    rest = [parts[kind] for kind in ("styles", "artists", "lighting", "colours", "framing") if parts.get(kind)]
    return ", ".join([head, *rest]) if head else ", ".join(rest)


def _cut(prompt: str) -> str:
    """A lone subject too long for a button (an admin's long term): cut at a word."""
    while prompt and not fits_a_button(prompt):
        prompt = prompt.rsplit(" ", 1)[0] if " " in prompt else prompt[:-1]
    return prompt


def prompt_budget() -> int:
    """How many characters of plain (ASCII, quote-free) prompt text a button holds."""
    return DISCORD_LIMIT - len(encode_action(imagine_action("")))
