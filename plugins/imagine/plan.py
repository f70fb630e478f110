"""What an /imagine run will do, decided without torch: settings, quality presets, limits.

The handler checks what the user typed against the caps before anything is queued; the task
fills what was left open from the quality preset for the device it runs on (small on a CPU),
then clamps to the same caps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

from pydantic import Field

from bot.config import PluginSettings
from engine.errors import UserError
from engine.wire import Wire
from plugins.imagine.lineage import Ancestor

Quality = Literal["draft", "normal", "best"]
Drawer = Literal["auto", "vqgan", "pixels"]


@dataclass(frozen=True)
class Preset:
    size: int
    steps: int
    cutouts: int


# Per device class: a CPU step of f16 VQGAN + ViT-B/32 at 128 px with 32 cutouts takes seconds.
PRESETS: dict[str, dict[str, Preset]] = {
    "cpu": {"draft": Preset(128, 20, 8), "normal": Preset(192, 50, 16), "best": Preset(256, 100, 32)},
    "gpu": {"draft": Preset(256, 100, 32), "normal": Preset(384, 300, 32), "best": Preset(512, 500, 64)},
}


class ImagineSettings(PluginSettings):
    """/imagine settings: CLIPBOT_IMAGINE_<NAME>."""

    max_size: int = Field(512, ge=16, description="largest picture side in pixels a request may ask for")
    max_steps: int = Field(1000, ge=1, description="most optimisation steps one request may ask for")
    max_cutouts: int = Field(64, ge=1, description="most CLIP cutouts per step")
    max_snapshots: int = Field(10, ge=1, le=20, description="most progress snapshots one run keeps")
    quality: Quality = Field("normal", description="default quality preset: draft, normal or best")
    drawer: Drawer = Field("auto", description="default drawer: auto (vqgan when its weights are here), vqgan, pixels")
    checkpoint_every: int = Field(10, ge=1, description="steps between checkpoints a restarted job resumes from")
    cut_pow: float = Field(1.0, gt=0, description="cutout size power (higher: smaller cutouts)")
    learning_rate: float = Field(0.1, gt=0, le=10, description="Adam step size on the latents")
    state_ttl: int = Field(86400, ge=60, description="seconds a finished picture's latent is kept for continue/variations")
    timelapse_frames: int = Field(60, ge=2, le=500, description="most low-resolution frames a run keeps for its timelapse")
    timelapse_every: int = Field(0, ge=0, description="steps between timelapse frames (0: spread timelapse_frames over the run)")
    timelapse_side: int = Field(192, ge=16, le=1024, description="longest side in pixels of a timelapse frame")
    timelapse_fps: int = Field(10, ge=1, le=60, description="timelapse frames per second (short runs play at least 2 s)")


def check_request(limits: ImagineSettings, *, size: tuple[int, int] | None, steps: int | None,
                  every: int | None) -> None:
    """Refuse, in one sentence, what the caps do not allow (before anything is queued)."""
    if size is not None and max(size) > limits.max_size:
        raise UserError(f"{size[0]}x{size[1]} is too big: the largest side allowed here is {limits.max_size} px.")
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise UserError(f"steps must be between 1 and {limits.max_steps}.")
    if every is not None:
        if every < 1:
            raise UserError("every must be at least 1 (a snapshot every N steps).")
        if steps is not None and steps // every > limits.max_snapshots:
            least = math.ceil(steps / limits.max_snapshots)
            raise UserError(f"every {every} would make {steps // every} snapshots; the most is "
                            f"{limits.max_snapshots} (use every {least} or more).")


def resolve(limits: ImagineSettings, device_class: str, *, quality: str | None, size: tuple[int, int] | None,
            steps: int | None, every: int | None) -> dict[str, Any]:
    """Fill what the request left open from the quality preset for this device; clamp to the caps."""
    preset = PRESETS[device_class][quality or limits.quality]
    width, height = size or (preset.size, preset.size)
    scale = min(1.0, limits.max_size / max(width, height))
    width, height = max(16, int(width * scale)), max(16, int(height * scale))
    steps = min(steps or preset.steps, limits.max_steps)
    every = max(every or math.ceil(steps / 4), math.ceil(steps / limits.max_snapshots))
    return {"width": width, "height": height, "steps": steps, "every": every,
            "cutouts": min(preset.cutouts, limits.max_cutouts)}


@dataclass(frozen=True)
class ImagineJob:
    """The arguments of one /imagine run, as the handler decided them and the task reads them.

    It crosses to the worker as JSON (`to_json`, the job's Celery kwargs and record) and back
    (`from_json`, in the task): the keys are the ones job records have always held, so a job
    submitted before an upgrade still resumes."""

    prompt: str
    seed: int
    quality: Quality | None = None
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    every: int | None = None
    drawer: Drawer = "auto"
    init: str | None = None  # blob key of the picture to start from
    start: dict | None = None  # {"mode": "continue"|"vary", "state": blob key, "noise"?}: an earlier job's end
    augment: bool = True
    safety: dict | None = None  # engine.safety.Moderation's JSON: the channel's policy, who asked where
    # lineage (plugins.imagine.lineage): the job this one builds on, and that job's own chain
    parent: str | None = None
    mode: str | None = None  # how it builds on the parent: reroll, vary, continue, init, upscale, zoom-out...
    lineage: list | None = None
    # timelapse (plugins.imagine.timelapse): make it at the end, to fit this upload limit (bytes; None: any)
    timelapse: bool | None = None
    upload_limit: int | None = None
    # /blend: pictures as prompts, `ImagePrompt.to_json()` each (CLIP embeddings in the blob store)
    image_prompts: list | None = None

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.augment:  # the default: records have never carried it
            del data["augment"]
        return {k: v for k, v in data.items() if v is not None or k in _ALWAYS_SENT}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ImagineJob":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise UserError(f"This /imagine job has arguments I don't know: {', '.join(sorted(unknown))}.")
        return cls(**data)


_ALWAYS_SENT = {"prompt", "seed", "quality", "steps", "every", "drawer"}


@dataclass(frozen=True)
class Asked:
    """What the user typed into /imagine, before the caps and an earlier job fill it in."""

    prompt: str
    steps: int | None = None
    size: str | None = None
    seed: int | None = None
    every: int | None = None
    init: Any = None  # bot.commands.Attachment (the plan stays free of bot/ imports)
    drawer: Drawer | None = None
    preset: Quality | None = None
    from_job: str = ""
    mode: str | None = None  # reroll, vary, continue, init, or a derived mode (lineage.DERIVED)


@dataclass(frozen=True)
class ImagePrompt(Wire):
    """A picture the run is pulled towards (weight > 0) or pushed from (< 0), as text prompts are:
    the blob key of its CLIP embedding (float32, `plugins.imagine.blend_tasks`), the fingerprint of
    the model that made it, and what it was (a file name or a message link) for the reply."""

    key: str
    weight: float
    model: str
    source: str = ""


@dataclass(frozen=True)
class Snapshot(Wire):
    """A progress picture that was posted: at which step, its blob key and file name."""

    step: int
    key: str
    filename: str


@dataclass(frozen=True)
class Attempt(Wire):
    """One run of the job (a worker kill and a redelivery make two): where it started."""

    attempt: int
    from_step: int


@dataclass(frozen=True)
class ImagineResult(Wire):
    """A finished /imagine job: what ran (prompt, seed, size, steps, drawer, models), the blob keys
    of the final picture and of the end state (what Continue and Variations start from), the
    snapshots posted, the loss per step and the attempts it took."""

    prompt: str
    seed: int
    steps: int
    every: int
    size: str  # "WxH"
    width: int
    height: int
    drawer: str
    cutouts: int
    quality: str
    model: str
    clip: str
    final: str
    state: str
    job_id: str = ""
    meaningless: bool = False
    snapshots: tuple[Snapshot, ...] = ()
    loss: tuple[float, ...] = ()
    runs: tuple[Attempt, ...] = ()
    seconds_per_step: float | None = None
    flagged: str = ""  # the safety concept the pictures matched (they were blurred), or ""
    # lineage: the job it was built from, how (reroll, vary, upscale, zoom-out...), and the chain back
    parent: str = ""
    mode: str = ""
    lineage: tuple[Ancestor, ...] = ()
    # timelapse: the blob of its low-resolution frames and how many; asked at the start (with the limit)
    frames: str = ""
    frame_count: int = 0
    timelapse: bool = False
    upload_limit: int = 0  # 0: any size
    image_prompts: tuple[ImagePrompt, ...] = ()  # /blend's pictures: kept by Reroll, Variations, Upscale...
