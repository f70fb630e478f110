"""Parsing /imagine's text inputs (light: no torch): weighted prompts and image sizes.

Prompts follow VQGAN-CLIP's (nerdyrodent's) syntax: `a watercolor fox:1 | blurry:-0.5`. Each part
is `text[:weight[:stop]]`; weight defaults to 1 (negative pushes the image away from the text),
stop to -inf (a distance below which that prompt stops pulling).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from engine.errors import UserError

MAX_PROMPTS = 8
# CLIP's context is 77 tokens, two of them start/end markers; every word is at least one token.
MAX_WORDS = 75
_NUMBER = re.compile(r"^\s*-?(\d+(\.\d*)?|\.\d+)(e-?\d+)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class WeightedPrompt:
    text: str
    weight: float = 1.0
    stop: float = -math.inf


def parse_prompts(text: str, *, need_positive: bool = True) -> list[WeightedPrompt]:
    """`a fox:1 | blurry:-0.5` -> prompts; a UserError says what is wrong with the text.
    `need_positive=False` (a /blend, whose pictures pull) allows only negative text parts."""
    parts = [part.strip() for part in text.split("|")]
    if not text.strip() or not all(parts):
        raise UserError("Give a prompt, e.g. `a watercolor fox` or `a watercolor fox:1 | blurry:-0.5`.")
    if len(parts) > MAX_PROMPTS:
        raise UserError(f"At most {MAX_PROMPTS} prompts separated by | (got {len(parts)}).")
    prompts = [_one(part) for part in parts]
    if need_positive and all(p.weight <= 0 for p in prompts):
        raise UserError("At least one prompt needs a positive weight (negative ones only push away).")
    return prompts


def _one(part: str) -> WeightedPrompt:
    # Up to two numbers after the last colons are weight and stop; other colons belong to the text.
    pieces = part.split(":")
    numbers: list[float] = []
    while len(pieces) > 1 and len(numbers) < 2 and _NUMBER.match(pieces[-1]):
        numbers.insert(0, float(pieces.pop()))
    prompt = ":".join(pieces).strip()
    if not prompt:
        raise UserError(f"The prompt part '{part}' has a weight but no text.")
    weight = numbers[0] if numbers else 1.0
    stop = numbers[1] if len(numbers) > 1 else -math.inf
    if not math.isfinite(weight) or weight == 0:
        raise UserError(f"The weight of '{prompt}' must be a non-zero number.")
    if len(prompt.split()) > MAX_WORDS:
        raise UserError(f"The prompt '{prompt[:40]}…' is too long: CLIP reads at most 77 tokens "
                        f"(about {MAX_WORDS} words).")
    return WeightedPrompt(prompt, weight, stop)


def parse_size(text: str) -> tuple[int, int]:
    """`256`, `256x192` or `256×192` -> (width, height)."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*(?:[x×X*]\s*(\d{1,5}))?\s*", text or "")
    if not match:
        raise UserError(f"Size must look like 256 or 256x192 (width x height), got '{text}'.")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if width < 16 or height < 16:
        raise UserError("Images must be at least 16x16 pixels.")
    return width, height


def parse_weights(text: str, count: int) -> list[float]:
    """/blend's `weights: 1 0.5 -0.3` (spaces, commas or |): one non-zero number per picture,
    in the order the pictures were given; empty: 1 each."""
    if not text.strip():
        return [1.0] * count
    parts = [p for p in re.split(r"[\s,|]+", text.strip()) if p]
    if not all(_NUMBER.match(p) for p in parts):
        raise UserError(f"weights must be numbers, one per picture, e.g. `1 0.5 -0.3` (got '{text.strip()}').")
    weights = [float(p) for p in parts]
    if len(weights) != count:
        raise UserError(f"Give one weight per picture: {count} picture{'s' * (count != 1)}, "
                        f"{len(weights)} weight{'s' * (len(weights) != 1)}.")
    if any(not math.isfinite(w) or w == 0 for w in weights):
        raise UserError("Each picture's weight must be a non-zero number (negative pushes away from it).")
    return weights
