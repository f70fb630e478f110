"""Timelapse pieces without a model: how many frames a run keeps, the GIF and MP4 they make (read
back with imageio and decoded with the wheel's own ffmpeg), fitting a file to an upload limit, and
the frames blob."""

from __future__ import annotations

import io
import re
import subprocess

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from engine.animation import HOLD_S, encode_gif, encode_mp4, ffmpeg_exe, fit, thinned
from engine.errors import UserError
from plugins.imagine.timelapse import frame_interval, low_res, make, pack, unpack


def _frames(count: int, size=(48, 40), noise: bool = False) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        if noise:
            array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        else:  # a picture taking shape: one square growing across a gradient
            array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
            array[..., 2] = np.linspace(0, 255, size[0], dtype=np.uint8)[None, :]
            array[: 2 + i % size[1], : 2 + i % size[0], 0] = 255
        frames.append(Image.fromarray(array, "RGB"))
    return frames


def _kept(steps: int, every: int, cap: int) -> list[int]:
    """The steps the task keeps a frame at (the start, every K steps, the last): its rule."""
    k = frame_interval(steps, every, cap)
    return sorted({0, *range(k, steps + 1, k), steps})


@pytest.mark.parametrize("steps", [1, 2, 5, 59, 60, 61, 100, 200, 999, 1000])
@pytest.mark.parametrize("cap", [2, 3, 10, 60])
def test_frames_never_exceed_the_cap_and_span_the_whole_run(steps, cap):
    kept = _kept(steps, 0, cap)
    assert len(kept) <= cap and kept[0] == 0 and kept[-1] == steps
    if steps >= cap:  # an automatic interval uses most of the cap
        assert len(kept) > cap // 2


def test_a_set_interval_is_kept_unless_it_would_make_too_many_frames():
    assert frame_interval(100, 5, 60) == 5 and _kept(100, 5, 60) == list(range(0, 101, 5))
    assert frame_interval(100, 1, 11) == 10 and len(_kept(100, 1, 11)) == 11


def test_the_gif_has_every_frame_loops_and_holds_the_last():
    frames = _frames(12)
    gif = encode_gif(frames, 0.1)
    read = iio.imread(gif, index=None)  # imageio's reader, not ours
    assert read.shape[:3] == (12, 40, 48)
    with Image.open(io.BytesIO(gif)) as im:
        assert im.format == "GIF" and im.n_frames == 12 and im.info["loop"] == 0
        durations = []
        for n in range(im.n_frames):
            im.seek(n)
            durations.append(im.info["duration"])
    assert durations[:-1] == [100] * 11 and durations[-1] == 100 + HOLD_S * 1000
    # the growing square is there, frame by frame (a palette, so colours are close, not exact)
    assert read[0, 1, 1, 0] > 200 and read[0, 30, 30, 0] < 60 and read[-1, 12, 12, 0] > 200


def _probe(mp4: bytes) -> tuple[str, int]:
    """(ffmpeg's description of the video stream, how many frames decode) with the wheel's ffmpeg."""
    done = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", "pipe:0", "-f", "rawvideo", "-pix_fmt", "rgb24",
                           "pipe:1"], input=mp4, capture_output=True, timeout=60, check=True)
    stream = next(line for line in done.stderr.decode().splitlines() if "Video:" in line)
    width, height = map(int, re.search(r"(\d{2,})x(\d{2,})", stream).groups())
    return stream, len(done.stdout) // (width * height * 3)


def test_the_mp4_is_h264_yuv420p_with_even_sides_and_every_frame():
    frames = _frames(15, size=(33, 27))  # odd sides: H.264 4:2:0 needs even ones
    mp4 = encode_mp4(frames, 0.1)
    stream, decoded = _probe(mp4)
    assert "h264" in stream and "yuv420p" in stream and "32x26" in stream, stream
    assert decoded == 15 + round(HOLD_S * 10)  # 10 fps, the last frame held HOLD_S


def test_fitting_drops_frames_first_then_shrinks_them_and_says_so():
    frames = _frames(40, size=(96, 96), noise=True)  # noise: hard to compress
    whole = fit(encode_gif, frames, None, seconds=4)
    assert not whole.reduced and whole.frames == 40 and whole.side == 96
    limit = len(whole.data) // 3
    fitted = fit(encode_gif, frames, limit, seconds=4)
    assert len(fitted.data) <= limit and fitted.reduced
    assert fitted.frames < 40 and fitted.side == 96  # frames went, the size stayed
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert im.n_frames == fitted.frames and im.size == (96, 96)
    tiny = fit(encode_gif, frames, len(whole.data) // 8, seconds=4)
    assert tiny.frames == 8 and tiny.side < 96 and len(tiny.data) <= len(whole.data) // 8
    with Image.open(io.BytesIO(tiny.data)) as im:
        assert max(im.size) == tiny.side
    mp4 = fit(encode_mp4, frames, 30_000, seconds=4)
    fps = max(1, round(mp4.frames / 4))  # the same 4 s, with the frames it kept
    assert len(mp4.data) <= 30_000 and _probe(mp4.data)[1] == mp4.frames + round(HOLD_S * fps)


def test_a_limit_nothing_fits_is_one_clear_error():
    with pytest.raises(UserError, match=r"can't be made small enough for the upload limit here \(500 bytes\)"):
        fit(encode_gif, _frames(10, noise=True), 500, seconds=2)


def test_thinning_keeps_the_first_and_last_evenly():
    assert thinned(list(range(10)), 4) == [0, 3, 6, 9]
    assert thinned(list(range(3)), 5) == [0, 1, 2] and thinned([1, 2], 1) == [2]


def test_frames_blob_round_trip_and_low_resolution():
    big = _frames(1, size=(300, 200))[0]
    out = io.BytesIO()
    big.save(out, format="PNG")
    small = low_res(out.getvalue(), 120)
    with Image.open(io.BytesIO(small)) as im:
        assert im.size == (120, 80)
    with Image.open(io.BytesIO(low_res(small, 500))) as im:
        assert im.size == (120, 80)  # never enlarged
    frames = [{"step": s, "png": small} for s in (0, 4, 8)]
    back = unpack(pack(frames))
    assert [s for s, _ in back] == [0, 4, 8] and back[1][1].size == (120, 80)


def test_a_short_run_still_plays_for_two_seconds():
    made = make([(s, f) for s, f in enumerate(_frames(4))], None, fps=10)
    with Image.open(io.BytesIO(made.gif.data)) as im:
        assert im.n_frames == 4 and im.info["duration"] == 500  # 2 s over 4 frames
    assert _probe(made.mp4.data)[1] == 4 + round(HOLD_S * 2)  # at 2 fps
    assert (made.first_step, made.last_step) == (0, 3)
