"""/imagine through the local chat and dispatch on the embedded engine (tiny presets, CPU)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from bot.adapters.local import LocalAdapter, action_command
from tests.conftest import write_image
from tests.support.chat import final_of, say

FAST = "steps: 12 size: 64 every: 4"


def test_progress_snapshots_final_data_and_actions(local):
    replies = say(local, f"/imagine a watercolor fox:1 | blurry:-0.5 {FAST} seed: 5")
    final = final_of(replies)
    assert final.data["seed"] == 5 and final.data["steps"] == 12 and final.data["size"] == "64x64"
    assert final.data["snapshots"] == ["step-0000.png", "step-0004.png", "step-0008.png", "step-0012.png"]
    assert len(final.data["loss"]) == 12 and final.data["final"] == "final.png"
    assert [i.filename for i in final.images] == ["final.png"]
    assert Image.open(io.BytesIO(final.images[0].data)).size == (64, 64)
    assert "random test weights" in final.text  # tiny-test: labelled meaningless
    # progress: a queued note, then snapshot replies for steps 0 (preview), 4, 8, 12, each with Cancel
    progress = [r for r in replies if not r.final]
    shots = [i.filename for r in progress for i in r.images]
    assert shots == ["step-0000.png", "step-0004.png", "step-0008.png", "step-0012.png"]
    assert all(r.progress is not None and r.actions[0].command == "cancel" for r in progress)
    assert [r.progress for r in progress if r.images][1:] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert [a.label for a in final.actions] == [
        "Reroll", "Variations", "Continue", "Use as init", "Upscale x2", "Zoom out 1.5x", "Zoom out 2x", "Pan left",
        "Pan right", "Pan up", "Pan down", "Remix", "Timelapse", "Params", "Delete"]
    assert final.data["job"] == final.actions[0].options["from_job"] and final.data["parent"] is None
    printed = local.buffer.getvalue()
    assert "[Reroll] /imagine from_job: " in printed and printed.count("[Cancel]") == 1


@pytest.mark.slow
def test_same_seed_same_picture(local):
    first = final_of(say(local, f"/imagine a red boat {FAST} seed: 42")).images[0].data
    again = final_of(say(local, f"/imagine a red boat {FAST} seed: 42")).images[0].data
    other = final_of(say(local, f"/imagine a red boat {FAST} seed: 43")).images[0].data
    assert first == again and first != other


@pytest.mark.slow
def test_actions_are_typed_commands_that_work(local):
    final = final_of(say(local, f"/imagine a tall tower {FAST} seed: 9"))
    by_label = {a.label: a for a in final.actions}

    reroll = final_of(say(local, action_command(by_label["Reroll"])))
    assert reroll.data["seed"] != 9 and reroll.data["steps"] == 12 and reroll.data["size"] == "64x64"

    cont = final_of(say(local, action_command(by_label["Continue"]) + " steps: 4"))
    assert cont.data["steps"] == 16 and cont.data["seed"] == 9
    assert cont.data["loss"][:12] == final.data["loss"]  # the same run, carried on
    assert cont.data["snapshots"] == ["step-0016.png"]

    vary = final_of(say(local, action_command(by_label["Variations"])))
    assert vary.data["steps"] == 12 and vary.images[0].data != final.images[0].data

    init = final_of(say(local, action_command(by_label["Use as init"]) + " prompt: a short tower"))
    assert init.data["size"] == "64x64" and "a short tower" in init.text


def test_init_image_and_pixels_drawer(local, tmp_path):
    picture = write_image(tmp_path / "start.png", size=(80, 60), color=(20, 180, 60))
    final = final_of(say(local, f"/imagine a green field init: {picture} {FAST} drawer: pixels"))
    assert "pixels" in final.text and final.data["size"] == "64x64"
    pixels = Image.open(io.BytesIO(final.images[0].data)).convert("RGB")
    red, green, blue = pixels.resize((1, 1)).getpixel((0, 0))
    assert green > red and green > blue  # it started from the green picture


def test_a_prompt_over_clips_77_tokens_is_a_clear_error(local):
    reply = say(local, "/imagine " + "supercalifragilisticexpialidocious " * 12 + FAST)[-1]
    assert reply.error and "too long: CLIP reads at most 77 tokens" in reply.text


@pytest.mark.parametrize("line, message", [
    ("/imagine a fox size: 4000", "the largest side allowed here is 512 px"),
    ("/imagine a fox steps: 5000", "steps must be between 1 and 1000"),
    ("/imagine a fox steps: 100 every: 1", "every 1 would make 100 snapshots; the most is 10 (use every 10"),
    ("/imagine a fox size: huge", "Size must look like 256 or 256x192"),
    ("/imagine blurry:-1", "At least one prompt needs a positive weight"),
    ("/imagine a fox:0", "must be a non-zero number"),
    ("/imagine " + "word " * 80, "too long: CLIP reads at most 77 tokens"),
    ("/imagine =", "means the prompt of from_job"),
    ("/imagine a fox mode: vary", "mode needs from_job"),
    ("/imagine = from_job: 0123456789abcdef mode: vary", "can't find that finished /imagine job"),
])
def test_bad_requests_are_refused_before_queueing(local, line, message):
    jobs_before = set(local.dispatcher.engine.book.store.keys("clipbot:job:"))
    reply = say(local, line)[-1]
    assert reply.error and message in reply.text
    assert set(local.dispatcher.engine.book.store.keys("clipbot:job:")) == jobs_before


def test_only_the_requester_or_an_admin_may_cancel(embedded, tmp_path):
    from bot import longjob

    owner = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path, user_id="ann", is_admin=False)
    stranger = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path, user_id="bob", is_admin=False)

    async def scenario():
        request = owner.request("imagine", {"prompt": "a slow fox", "steps": "400", "size": "64", "every": "40"})
        replies = embedded.handle(request)
        first = await replies.__anext__()
        job = first.actions[0].options["job"]
        refused = [r async for r in embedded.handle(stranger.request("cancel", {"job": job}))][-1]
        assert refused.error and "Only the person who started that job" in refused.text
        assert longjob.entry(embedded, job) is not None
        accepted = [r async for r in embedded.handle(owner.request("cancel", {"job": job}))][-1]
        assert not accepted.error
        rest = [r async for r in replies]
        return rest[-1], job

    final, job = asyncio.run(scenario())
    assert final.final and "cancelled" in final.text
    assert embedded.engine.book.get(job).state == "cancelled"
    assert longjob.entry(embedded, job) is None


def test_auto_drawer_falls_back_to_pixels_without_vqgan_weights(tmp_path):
    from bot.testing import TestBot

    with TestBot(vqgan_model="imagenet_f16_16384", data_dir=tmp_path) as bot:
        final = bot.ask(f"/imagine a lighthouse {FAST}")
        asked = bot.ask(f"/imagine a lighthouse {FAST} drawer: vqgan")
    assert not final.error, final.text
    assert "pixels" in final.text
    assert asked.error and "\n" not in asked.text
    assert "The VQGAN imagenet_f16_16384 is not downloaded; run `clipbot models pull --vqgan" in asked.text


@pytest.mark.slow
def test_cli_contract(data_dir, tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import ROOT, clipbot_env

    out = subprocess.run(
        [sys.executable, "-m", "bot.cli", "imagine", "a watercolor fox:1 | blurry:-0.5", "--steps", "12",
         "--size", "64x64", "--seed", "3", "--every", "4", "--out", str(tmp_path / "o"), "--json"],
        cwd=ROOT, env=clipbot_env(data_dir, None), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert set(answer) == {"seed", "steps", "size", "final", "snapshots", "loss", "job", "parent"}
    assert answer["parent"] is None and len(answer["job"]) == 32
    assert answer["seed"] == 3 and answer["steps"] == 12 and answer["size"] == "64x64"
    assert answer["final"] == str(tmp_path / "o" / "final.png")
    assert answer["snapshots"] == [str(tmp_path / "o" / f"step-{n:04d}.png") for n in (0, 4, 8, 12)]
    assert sorted(str(p) for p in (tmp_path / "o").iterdir()) == sorted([answer["final"], *answer["snapshots"]])
    assert all(Image.open(p).size == (64, 64) for p in [answer["final"], *answer["snapshots"]])
    assert len(answer["loss"]) == 12
    assert "step 12/12" in out.stderr  # progress went to stderr; stdout is clean JSON
    bad = subprocess.run([sys.executable, "-m", "bot.cli", "imagine", "a fox", "--size", "9000"], cwd=ROOT,
                         env=clipbot_env(data_dir, None), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "largest side" in bad.stderr

    # Another process builds on the finished job: the embedded engine kept it under the data dir.
    def derive(*args):
        run = subprocess.run([sys.executable, "-m", "bot.cli", "imagine", "--from-job", answer["job"], *args,
                              "--out", str(tmp_path / "d"), "--json"], cwd=ROOT, env=clipbot_env(data_dir, None),
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    upscaled = derive("--mode", "upscale", "--steps", "2", "--every", "2")
    assert upscaled["size"] == "128x128" and upscaled["parent"] == answer["job"] and upscaled["steps"] == 2
    assert Image.open(upscaled["final"]).size == (128, 128)
    panned = derive("--mode", "pan-left", "--prompt", "a fox at dusk", "--steps", "2", "--every", "2")
    assert panned["size"] == "96x64" and panned["parent"] == answer["job"] and panned["seed"] == 3


def test_every_button_fits_a_discord_custom_id(local):
    from bot.actions import decode_action, encode_action

    final = final_of(say(local, f"/imagine a kite {FAST}"))
    progress = next(r for r in say(local, f"/imagine a kite {FAST}") if r.progress is not None)
    for action in final.actions + progress.actions:
        assert decode_action(encode_action(action)).options == action.options  # <= 100 characters


def test_a_restarted_embedded_bot_says_a_lost_job_is_lost(tmp_path):
    from bot.testing import TestBot
    from bot import longjob

    with TestBot(data_dir=tmp_path) as bot:  # a job record from "before the restart", gone from memory
        bot.app.engine.store.set("clipbot:longjob:feedface", {
            "job_id": "feedface", "task": "imagine.generate", "queue": "gpu-long", "label": "Imagining x",
            "finish": "plugins.imagine:finish_reply", "platform": "local", "conversation": {"channel": "c"},
            "user_id": "u", "channel_id": "c", "created": 1.0})
        tasks = asyncio.run(_resume_and_wait(bot.chat))
        assert "Imagining x: lost when clipbot restarted" in bot.output.getvalue()
        assert longjob.unfinished(bot.app, "local") == [] and tasks == 1


async def _resume_and_wait(chat):
    tasks = await chat.resume()
    await asyncio.gather(*tasks)
    return len(tasks)


def test_prompt_text_is_shown_literally_not_escaped_twice(local):
    replies = say(local, f"/imagine a sea_lion *at* dusk {FAST} seed: 2")
    assert not final_of(replies).error, final_of(replies).text
    shown = local.buffer.getvalue()
    assert "Imagining a sea_lion *at* dusk" in shown  # the progress label
    assert "\\_" not in shown and "\\*" not in shown


def test_an_admin_may_cancel_only_jobs_of_their_own_space(embedded, tmp_path):
    """Issue 13, defect 6: an admin of one server/workspace could cancel another's job by id."""
    import dataclasses

    from bot import longjob

    local = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path, user_id="ann", is_admin=False)

    def as_(request, **fields):
        return dataclasses.replace(request, platform="discord", **fields)

    async def scenario():
        request = as_(local.request("imagine", {"prompt": "a slow fox", "steps": "400", "size": "64",
                                                "every": "40"}), space_id="A")
        replies = embedded.handle(request)
        job = (await replies.__anext__()).actions[0].options["job"]
        other_admin = as_(local.request("cancel", {"job": job}), user_id="eve", is_admin=True, space_id="B")
        refused = [r async for r in embedded.handle(other_admin)][-1]
        assert refused.error and "an admin where it was started" in refused.text
        assert embedded.engine.book.get(job).state in ("queued", "started")
        assert longjob.entry(embedded, job) is not None
        own_admin = as_(local.request("cancel", {"job": job}), user_id="adm", is_admin=True, space_id="A")
        accepted = [r async for r in embedded.handle(own_admin)][-1]
        assert not accepted.error, accepted.text
        rest = [r async for r in replies]
        return rest[-1], job

    final, job = asyncio.run(scenario())
    assert final.final and "cancelled" in final.text
    assert embedded.engine.book.get(job).state == "cancelled"


def test_cancel_of_an_unknown_job_says_no_such_job(local):
    reply = say(local, "/cancel 0123456789abcdef")[-1]
    assert reply.error and "No such job" in reply.text and "Cancelling" not in reply.text
