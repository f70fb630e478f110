"""Animations from still frames: an animated GIF (Pillow) and an H.264 MP4 (the ffmpeg binary of
the `imageio-ffmpeg` wheel), each made to fit an upload limit.

- The MP4 is made by running that ffmpeg ourselves (`subprocess.run`, raw rgb24 frames on stdin,
  the file written to a temporary folder). imageio's own ffmpeg writer starts ffmpeg with a
  `preexec_fn`, which hung the embedded engine's worker thread (imageio-ffmpeg #58).
- `fit` drops frames first (every other one, the first and last kept), then shrinks them, until
  the file fits; it says what it had to do, so a reply can tell the user.

Blocking (encoding takes up to a few seconds): call it off the event loop.
"""

from __future__ import annotations

import io
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from PIL import Image

from engine.errors import UserError

__all__ = ["Fitted", "encode_gif", "encode_mp4", "ffmpeg_exe", "fit", "size_text", "thinned"]

MIN_FRAMES = 8  # below this many frames it is no longer a timelapse: shrink instead
MIN_SIDE = 32  # the smallest longest side frames are shrunk to
HOLD_S = 1.0  # the last frame stays this long (the finished picture)
_FFMPEG_TIMEOUT_S = 120

Encoder = Callable[[Sequence[Image.Image], float], bytes]


def ffmpeg_exe() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel (no system ffmpeg needed)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def encode_gif(frames: Sequence[Image.Image], frame_s: float) -> bytes:
    """An endlessly looping GIF: each frame `frame_s` seconds, the last one held `HOLD_S` more."""
    if not frames:
        raise ValueError("no frames")
    durations = [max(20, round(frame_s * 1000))] * len(frames)  # browsers treat < 20 ms as 100 ms
    durations[-1] += round(HOLD_S * 1000)
    out = io.BytesIO()
    # Our own palette per frame: Pillow's default (median cut) takes ~25x as long for the same size.
    first, *rest = [f.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE) for f in frames]
    first.save(out, format="GIF", save_all=True, append_images=rest, duration=durations, loop=0)
    return out.getvalue()


def encode_mp4(frames: Sequence[Image.Image], frame_s: float) -> bytes:
    """An H.264 MP4 (yuv420p, even sides: what every player and chat app plays) of the frames at
    1/`frame_s` frames per second, the last frame held `HOLD_S` more."""
    if not frames:
        raise ValueError("no frames")
    width, height = (max(2, side - side % 2) for side in frames[0].size)
    fps = max(1, round(1 / frame_s)) if frame_s > 0 else 10
    held = list(frames) + [frames[-1]] * max(1, round(HOLD_S * fps))
    raw = b"".join(_even(f, width, height).tobytes() for f in held)
    with tempfile.TemporaryDirectory(prefix="clipbot-mp4-") as folder:
        target = Path(folder) / "out.mp4"
        command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                   "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
                   "-an", "-c:v", "libx264", "-preset", "medium", "-crf", "23", "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", str(target)]
        done = subprocess.run(command, input=raw, capture_output=True, timeout=_FFMPEG_TIMEOUT_S, check=False)
        if done.returncode != 0 or not target.is_file():
            raise RuntimeError(f"ffmpeg could not make the MP4: {done.stderr.decode(errors='replace')[-500:]}")
        return target.read_bytes()


def _even(frame: Image.Image, width: int, height: int) -> Image.Image:
    rgb = frame.convert("RGB")
    return rgb if rgb.size == (width, height) else rgb.crop((0, 0, width, height))


@dataclass(frozen=True)
class Fitted:
    """An encoded animation and what fitting it took: frames kept (of how many), its longest side
    (of which)."""

    data: bytes
    frames: int
    of_frames: int
    side: int
    of_side: int

    @property
    def reduced(self) -> bool:
        return self.frames < self.of_frames or self.side < self.of_side


def fit(encode: Encoder, frames: Sequence[Image.Image], limit: int | None, *, seconds: float,
        min_frames: int = MIN_FRAMES, min_side: int = MIN_SIDE) -> Fitted:
    """`encode(frames, seconds per frame)` within `limit` bytes (None: any size), the whole
    animation lasting about `seconds`: fewer frames first, then smaller ones. UserError when even
    `min_frames` frames of `min_side` px do not fit."""
    if not frames:
        raise ValueError("no frames")
    kept = list(frames)
    full_side = side = max(frames[0].size)
    while True:
        data = encode(_scaled(kept, side), seconds / len(kept))
        if limit is None or len(data) <= limit:
            return Fitted(data, len(kept), len(frames), side, full_side)
        if len(kept) > min_frames:
            kept = thinned(kept, max(min_frames, (len(kept) + 1) // 2))
        elif side > min_side:
            side = max(min_side, side * 3 // 4)
        else:
            raise UserError(f"The animation can't be made small enough for the upload limit here "
                            f"({size_text(limit)}).")


def thinned(frames: Sequence, count: int) -> list:
    """`count` of the frames, evenly spaced, the first and the last kept."""
    if count >= len(frames):
        return list(frames)
    if count <= 1:
        return [frames[-1]]
    return [frames[round(i * (len(frames) - 1) / (count - 1))] for i in range(count)]


def _scaled(frames: Sequence[Image.Image], side: int) -> list[Image.Image]:
    width, height = frames[0].size
    if max(width, height) <= side:
        return list(frames)
    scale = side / max(width, height)
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return [f.resize(size, Image.Resampling.LANCZOS) for f in frames]


def size_text(count: int) -> str:
    """A byte count as people read it: 256 KB, 9.5 MB."""
    for unit, factor in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if count >= factor:
            return f"{count / factor:.3g} {unit}"
    return f"{count} bytes"
