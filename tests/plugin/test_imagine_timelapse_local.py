"""Timelapse through the local chat (tiny presets, CPU): `timelapse: yes` posts a GIF and an MP4
of the run beside the picture; the Timelapse button makes them later, after a restart too, and
fits them to the upload limit of where it was asked."""

from __future__ import annotations

import asyncio
import dataclasses
import io

import numpy as np
from PIL import Image

from bot.adapters.local import action_command
from bot.testing import TestBot
from plugins.imagine.timelapse import unpack


def _replies(bot: TestBot, line: str, **request) -> list:
    """What `line` answers when the request carries more than the local chat sets (an upload limit)."""
    asked = dataclasses.replace(bot.chat.parse(line), **request)

    async def collect():
        return [reply async for reply in bot.app.handle(asked)]

    return asyncio.run(collect())


def _gif_frames(data: bytes) -> tuple[int, int]:
    """(frames, milliseconds) of a GIF. Pillow writes a frame equal to the one before as a longer
    one, so a run that barely changes shows fewer frames, the same time."""
    with Image.open(io.BytesIO(data)) as im:
        durations = []
        for n in range(im.n_frames):
            im.seek(n)
            durations.append(im.info["duration"])
    return len(durations), sum(durations)


def test_timelapse_yes_posts_the_run_as_gif_and_mp4_and_its_button_makes_them_again_after_a_restart(
        tmp_path, monkeypatch):
    # 6 steps: frames at 0, 2, 4, 6; pixels: the tiny VQGAN keeps its codes for a few steps, pixels change
    monkeypatch.setenv("CLIPBOT_IMAGINE_TIMELAPSE_FRAMES", "4")
    with TestBot(data_dir=tmp_path) as bot:
        final = bot.ask("/imagine a lighthouse steps: 6 size: 32 every: 3 seed: 4 drawer: pixels timelapse: yes")
        assert final.final and not final.error, final.text
        plain = bot.ask("/imagine a lighthouse steps: 6 size: 32 every: 3 seed: 4 drawer: pixels")
        kept = unpack(bot.app.face.blobs.get(bot.app.face.job(final.data["job"]).result["frames"]))
    assert [i.filename for i in final.images] == ["final.png", "timelapse.gif", "timelapse.mp4"]
    made = final.data["timelapse"]
    assert made["gif"] == "timelapse.gif" and made["mp4"] == "timelapse.mp4" and made["limit"] is None
    assert made["steps"] == [0, 6] and made["frames"] == {"gif": 4, "mp4": 4} and made["side"]["gif"] == 32
    assert "Timelapse" in final.text and "steps 0–6, 4 frames" in final.text
    with Image.open(io.BytesIO(final.images[0].data)) as im:
        picture = np.asarray(im.convert("RGB"))
    # the kept frames: the start, every 2 steps; the last is the finished picture, the first is not
    assert [step for step, _ in kept] == [0, 2, 4, 6]
    assert _gif_frames(final.images[1].data)[1] == 2000 + 1000  # a short run plays 2 s, the end held 1 s
    assert np.array_equal(np.asarray(kept[-1][1]), picture) and not np.array_equal(np.asarray(kept[0][1]), picture)
    # asking for it changes nothing about the run; without it there are no files, only the button
    assert plain.images[0].data == final.images[0].data and len(plain.images) == 1 and "timelapse" not in plain.data
    button = next(a for a in plain.actions if a.label == "Timelapse")
    assert action_command(button) == f"/timelapse job: {plain.data['job']}"

    with TestBot(data_dir=tmp_path) as bot:  # a new process: the frames come from the kept job
        again = bot.ask(action_command(next(a for a in final.actions if a.label == "Timelapse")))
    assert not again.error, again.text
    assert [i.filename for i in again.images] == ["timelapse.gif", "timelapse.mp4"]
    assert again.images[0].data == final.images[1].data and again.data["job"] == final.data["job"]


def test_a_small_upload_limit_drops_frames_then_shrinks_them_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPBOT_IMAGINE_TIMELAPSE_FRAMES", "20")
    with TestBot(data_dir=tmp_path) as bot:
        final = bot.ask("/imagine a stormy sea steps: 19 size: 64 every: 19 seed: 2")
        job = final.data["job"]
        whole = bot.ask(f"/timelapse {job}")
        limit = len(whole.images[0].data) // 2
        fitted = _replies(bot, f"/timelapse {job}", upload_limit=limit)[-1]
        refused = _replies(bot, f"/timelapse {job}", upload_limit=200)[-1]
        missing = bot.ask("/timelapse 0123456789abcdef0123456789abcdef")
    assert whole.data["timelapse"]["frames"]["gif"] == 20 and whole.data["timelapse"]["limit"] is None
    assert not fitted.error, fitted.text
    gif, mp4 = fitted.images
    assert len(gif.data) <= limit and len(mp4.data) <= limit
    kept = fitted.data["timelapse"]
    assert kept["limit"] == limit and kept["frames"]["gif"] < 20 and kept["of_frames"] == 20
    assert _gif_frames(gif.data)[0] <= kept["frames"]["gif"] < 20
    assert "GIF made smaller to fit the" in fitted.text and f"{kept['frames']['gif']} of 20 frames" in fitted.text
    assert refused.error and "can't be made small enough for the upload limit here (200 bytes)" in refused.text
    assert missing.error and "can't find that finished /imagine job" in missing.text
