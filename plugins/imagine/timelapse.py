"""Timelapse of an /imagine run (light: Pillow and the ffmpeg binary, no torch).

- The task keeps a low-resolution frame (longest side `timelapse_side`) at the start and every K
  steps (`timelapse_every`, or as many as keep the count within `timelapse_frames`), and the
  last step. The frames travel in the run's checkpoints (a resumed run has the frames it had)
  and end as one blob under the job (a zip of PNGs, kept as long as the job's end state).
- `/timelapse job:<id>` (the Timelapse button of every final reply), `/imagine ... timelapse: yes`
  and `clipbot imagine ... --timelapse` make an animated GIF and an MP4 of them, each fitted to the
  platform's upload limit (`Request.upload_limit`): fewer frames first, then smaller ones.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Sequence

from PIL import Image as Picture

from bot.commands import Image, Reply, command
from bot.markup import bold, code
from engine.animation import Fitted, encode_gif, encode_mp4, fit, size_text
from engine.errors import UserError

if TYPE_CHECKING:
    from plugins.imagine.plan import ImagineResult, ImagineSettings

GIF, MP4 = "timelapse.gif", "timelapse.mp4"
MIN_SECONDS = 2.0  # a short run's few frames still play slowly enough to see


def frame_interval(steps: int, every: int, cap: int) -> int:
    """Steps between two frames of a `steps`-step run: `every` (0: as few as needed), at least what
    keeps the frames (the start, every K steps, the last step) within `cap`."""
    least = math.ceil(steps / max(1, cap - 1)) if steps > 0 else 1
    return max(1, every, least)


def low_res(png: bytes, side: int) -> bytes:
    """The picture with its longest side at most `side` px, as PNG (never enlarged)."""
    with Picture.open(io.BytesIO(png)) as opened:
        picture = opened.convert("RGB")
    if max(picture.size) > side:
        picture.thumbnail((side, side), Picture.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def pack(frames: Sequence[dict]) -> bytes:
    """The frames (`{"step", "png"}`, in order) as one blob: a zip of `STEP.png` files."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
        for frame in frames:
            archive.writestr(f"{int(frame['step']):06d}.png", frame["png"])
    return out.getvalue()


def unpack(data: bytes) -> list[tuple[int, Picture.Image]]:
    """(step, picture) of each frame `pack` stored, in order."""
    frames = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in sorted(archive.namelist()):
            with Picture.open(io.BytesIO(archive.read(name))) as opened:
                frames.append((int(name.split(".")[0]), opened.convert("RGB")))
    return frames


@dataclass(frozen=True)
class Timelapse:
    """The two files of one job's timelapse and the steps its frames span."""

    gif: Fitted
    mp4: Fitted
    first_step: int
    last_step: int
    limit: int | None


def make(frames: Sequence[tuple[int, Picture.Image]], limit: int | None, fps: int) -> Timelapse:
    """A GIF and an MP4 of the frames, each within `limit` bytes (blocking: seconds)."""
    if not frames:
        raise UserError("That job kept no frames to make a timelapse of.")
    pictures = [picture for _, picture in frames]
    seconds = max(MIN_SECONDS, len(pictures) / fps)
    return Timelapse(gif=fit(encode_gif, pictures, limit, seconds=seconds),
                     mp4=fit(encode_mp4, pictures, limit, seconds=seconds),
                     first_step=frames[0][0], last_step=frames[-1][0], limit=limit)


def timelapse_parts(blobs: Any, result: "ImagineResult", limit: int | None,
                    settings: "ImagineSettings") -> tuple[tuple[Image, ...], dict, list[str]]:
    """(the GIF and MP4 as reply files, their `data`, the lines that describe them) for a finished
    job (blocking: reads the frames, encodes)."""
    if not result.frames:
        raise UserError("That job kept no frames (it ran before timelapses existed).")
    made = make(unpack(blobs.get(result.frames)), limit, settings.timelapse_fps)
    spoiler = bool(result.flagged)  # its frames were blurred like its snapshots
    files = (Image(made.gif.data, GIF, f"timelapse of {result.prompt}", spoiler=spoiler),
             Image(made.mp4.data, MP4, f"timelapse of {result.prompt}", spoiler=spoiler))
    lines = [f"{bold('Timelapse')}: steps {made.first_step}–{made.last_step}, {made.gif.of_frames} frames · "
             f"GIF {size_text(len(made.gif.data))} · MP4 {size_text(len(made.mp4.data))}"]
    for name, fitted in (("GIF", made.gif), ("MP4", made.mp4)):
        if fitted.reduced:
            lines.append(f"{name} made smaller to fit the {size_text(limit or 0)} upload limit here: "
                         f"{fitted.frames} of {fitted.of_frames} frames at {fitted.side} px "
                         f"(of {fitted.of_side}).")
    data = {"gif": GIF, "mp4": MP4, "frames": {"gif": made.gif.frames, "mp4": made.mp4.frames},
            "of_frames": made.gif.of_frames, "side": {"gif": made.gif.side, "mp4": made.mp4.side},
            "bytes": {"gif": len(made.gif.data), "mp4": len(made.mp4.data)}, "limit": limit,
            "steps": [made.first_step, made.last_step]}
    return files, data, lines


@command
async def timelapse(ctx, job: Annotated[str, "the /imagine job (its Timelapse button fills this in)"]) -> Reply:
    """An animated GIF and an MP4 of an /imagine picture taking shape, sized for this platform."""
    from plugins.imagine.params import finished_result

    result = finished_result(await ctx.run_blocking(ctx.engine.job, job.strip()))
    if result is None:
        raise UserError("I can't find that finished /imagine job (it may have expired).")
    files, data, lines = await ctx.run_blocking(timelapse_parts, ctx.engine.blobs, result, ctx.request.upload_limit,
                                                ctx.plugin_settings("imagine"))
    lines.insert(0, f"Job {code(result.job_id)}")
    return Reply(text="\n".join(lines), images=files, final=True,
                 data={"job": result.job_id, "timelapse": data})
