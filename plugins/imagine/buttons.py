"""The buttons a finished /imagine picture gets beyond Reroll/Variations/Continue/Use as init
(light): upscale, zoom out and pan (only those whose canvas the caps allow), Remix (asks for a new
prompt and a mode first), Timelapse (a GIF and MP4 of the run), Params and Delete. Each is a pre-filled command, so it works after a
restart and on every platform."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bot.commands import Action
from plugins.imagine.lineage import derived_size

if TYPE_CHECKING:
    from plugins.imagine.plan import ImagineResult, ImagineSettings

DERIVED_BUTTONS = (("Upscale x2", "upscale"), ("Zoom out 1.5x", "zoom-out"), ("Zoom out 2x", "zoom-out-2"),
                   ("Pan left", "pan-left"), ("Pan right", "pan-right"), ("Pan up", "pan-up"),
                   ("Pan down", "pan-down"))


def derived_actions(result: "ImagineResult", limits: "ImagineSettings") -> tuple[Action, ...]:
    """Upscale / zoom / pan buttons whose bigger canvas fits the size cap, then Remix."""
    shown = []
    for label, mode in DERIVED_BUTTONS:
        if max(derived_size(mode, result.width, result.height)) <= limits.max_size:
            shown.append(Action(label, "imagine", {"from_job": result.job_id, "mode": mode}))
    remix = Action("Remix", "imagine", {"from_job": result.job_id, "mode": "vary"}, ask=("prompt", "mode"))
    return (*shown, remix)


def timelapse_actions(result: "ImagineResult") -> tuple[Action, ...]:
    """Timelapse, where the run kept frames (jobs from before timelapses did not)."""
    return (Action("Timelapse", "timelapse", {"job": result.job_id}),) if result.frame_count else ()


def lineage_actions(job_id: str) -> tuple[Action, ...]:
    return (Action("Params", "params", {"job": job_id}), Action("Delete", "delete", {"job": job_id}, style="danger"))
