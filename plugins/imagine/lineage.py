"""Jobs built on earlier jobs (light: no torch): the derived modes, their canvases, and lineage.

A derived job starts from an earlier job's end state. `upscale` doubles the canvas (the latent is
upsampled and optimised more); `zoom-out*` and `pan-*` grow it, keep the earlier picture's latent
in the middle or on the side it came from (frozen), and draw the new area. The heavy half, laying
the earlier latent onto the new canvas, is `plugins.imagine.derive`.

Every result carries its lineage: one short line per ancestor, back to the first prompt, so the
Params of a fifth-generation picture still say where it came from after its ancestors expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.wire import Wire

UPSCALE = "upscale"
# How much each mode grows the canvas (width, height) and where the earlier picture sits in it:
# the share of the new room left of / above it, in halves (0: none, 1: centred, 2: all of it).
GROWN: dict[str, tuple[float, float, int, int]] = {
    "zoom-out": (1.5, 1.5, 1, 1),
    "zoom-out-2": (2.0, 2.0, 1, 1),
    "pan-left": (1.5, 1.0, 2, 1),  # new room on the left: the picture moves right
    "pan-right": (1.5, 1.0, 0, 1),
    "pan-up": (1.0, 1.5, 1, 2),
    "pan-down": (1.0, 1.5, 1, 0),
}
DERIVED = (UPSCALE, *GROWN)  # modes that change the canvas (the task lays the old latent onto it)
# Every drawer's grid divides this (VQGAN f16 / f8 / f4 and the pixel grid's 4), so a grown side
# adds whole latent cells and the old picture's cells land exactly.
CANVAS_STEP = 16
MAX_LINEAGE = 12  # ancestors kept per result: the first prompt and the latest ones


def derived_size(mode: str, width: int, height: int) -> tuple[int, int]:
    """The canvas a derived mode draws on, from the earlier picture's size."""
    if mode == UPSCALE:
        return 2 * width, 2 * height
    grow_x, grow_y, _, _ = GROWN[mode]
    return _grown(width, grow_x), _grown(height, grow_y)


def _grown(side: int, scale: float) -> int:
    if scale == 1.0:
        return side
    return side + max(CANVAS_STEP, round(side * (scale - 1) / CANVAS_STEP) * CANVAS_STEP)


def placement(mode: str, old: tuple[int, int], new: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of the earlier (rows, columns) grid inside the new one for a grow mode."""
    _, _, left_halves, top_halves = GROWN[mode]
    return (new[0] - old[0]) * top_halves // 2, (new[1] - old[1]) * left_halves // 2


@dataclass(frozen=True)
class Ancestor(Wire):
    """One earlier job in a picture's lineage: what it was and how its child was made from it."""

    job: str
    prompt: str
    seed: int
    steps: int
    size: str
    drawer: str
    mode: str = ""  # how this ancestor was itself made from its parent ("" for a first prompt)


def extended(lineage: tuple[Any, ...], parent: Any) -> list[dict]:
    """The lineage a child of `parent` (an ImagineResult) carries: its parent's, then the parent.
    Long chains keep the first prompt and the newest ancestors."""
    chain = [Ancestor.from_json(a) if isinstance(a, dict) else a for a in lineage]
    chain.append(Ancestor(job=parent.job_id, prompt=parent.prompt, seed=parent.seed, steps=parent.steps,
                          size=parent.size, drawer=parent.drawer, mode=parent.mode))
    if len(chain) > MAX_LINEAGE:
        chain = chain[:1] + chain[-(MAX_LINEAGE - 1):]
    return [a.to_json() for a in chain]
