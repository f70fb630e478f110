"""/blend through the local chat (tiny presets, CPU, small canvases): attachments and a posted
picture's message link as weighted image prompts, the buttons that keep them, and every refusal
(one sentence, nothing queued)."""

from __future__ import annotations

import io

import pytest

from bot.adapters.local import LocalAdapter, action_command
from bot.testing import TestBot
from tests.support.chat import final_of, say
from tests.support.pictures import write_image

SMALL = "steps: 4 size: 32 every: 2"


@pytest.fixture
def bot(tmp_path):
    with TestBot(data_dir=tmp_path / "data", channel_id="general") as test_bot:
        yield test_bot


@pytest.fixture
def pictures(tmp_path):
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    return {name: write_image(tmp_path / f"{name}.png", size=(80, 60), color=rgb) for name, rgb in colours.items()}


def test_blend_attachments_and_a_linked_picture_with_weights_and_its_buttons_keep_them(bot, pictures):
    posted = bot.ask(f"/post {pictures['blue']} a blue square")
    link = posted.data["permalink"]
    blended = bot.ask(f"/blend images: {pictures['red']} {pictures['green']} links: {link} "
                      f"prompt: a stained glass window weights: 1 0.5 -0.25 {SMALL} seed: 5")
    assert blended.final and not blended.error, blended.text
    assert blended.data["pictures"] == [{"source": "red.png", "weight": 1.0}, {"source": "green.png", "weight": 0.5},
                                        {"source": link, "weight": -0.25}]
    assert blended.data["size"] == "32x32" and blended.data["seed"] == 5 and len(blended.data["loss"]) == 4
    assert "blending red.png (1), green.png (0.5)" in blended.text and "a stained glass window" in blended.text
    by_label = {a.label: a for a in blended.actions}
    assert {"Reroll", "Variations", "Upscale x2", "Remix"} <= set(by_label)
    # a button is /imagine from_job: ... and the derived job keeps the pictures and their weights
    rerolled = bot.ask(action_command(by_label["Reroll"]))
    assert not rerolled.error, rerolled.text
    assert rerolled.data["pictures"] == blended.data["pictures"] and rerolled.data["parent"] == blended.data["job"]
    # deleting the reroll leaves the blend's own pictures: each job holds its own copies
    deleted = bot.ask(action_command(next(a for a in rerolled.actions if a.label == "Delete")))
    assert not deleted.error and "Deleted" in deleted.text
    upscaled = bot.ask(action_command(by_label["Upscale x2"]) + " steps: 2")
    assert not upscaled.error, upscaled.text
    assert upscaled.data["size"] == "64x64" and upscaled.data["pictures"] == blended.data["pictures"]
    params = bot.ask(f"/params {blended.data['job']}")
    assert not params.error and params.data["mode"] == "blend" and params.data["pictures"] == blended.data["pictures"]
    assert f"pictures: red.png (1), green.png (0.5), {link} (-0.25)" in params.text


def test_blend_without_text_is_named_by_its_pictures(bot, pictures):
    replies = bot.send(f"/blend images: {pictures['red']} {pictures['blue']} {SMALL}")
    final = final_of(replies)
    assert "A blend of 2 pictures" in final.text and final.data["pictures"][1] == {"source": "blue.png", "weight": 1.0}
    assert any("Blending 2 pictures" in r.text for r in replies[:-1])
    same = final_of(bot.send(f"/blend images: {pictures['red']} {pictures['blue']} {SMALL} "
                             f"seed: {final.data['seed']}"))
    assert same.data["loss"] == final.data["loss"]  # the same pictures and seed draw the same picture
    pushed = final_of(bot.send(f"/blend images: {pictures['red']} {pictures['blue']} weights: 1 -1 {SMALL} "
                               f"seed: {final.data['seed']}"))
    assert pushed.data["loss"] != final.data["loss"]


def _refused(chat_or_bot, line):
    replies = chat_or_bot.send(line) if isinstance(chat_or_bot, TestBot) else say(chat_or_bot, line)
    assert len(replies) == 1 and replies[0].error, [r.text for r in replies]  # nothing queued, no progress
    return replies[0].text


def test_each_refusal_is_one_sentence_and_queues_nothing(bot, pictures, tmp_path):
    red, green = pictures["red"], pictures["green"]
    assert "/blend takes 2 to 5 pictures (got 1)" in _refused(bot, f"/blend images: {red}")
    six = " ".join(str(p) for p in [red, green] * 3)
    assert "/blend takes 2 to 5 pictures (got 6)" in _refused(bot, f"/blend images: {six}")
    assert "one weight per picture: 2 pictures, 3 weights" in _refused(
        bot, f"/blend images: {red} {green} weights: 1 1 1").lower()
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture at all")
    assert "image" in _refused(bot, f"/blend images: {red} {notes}").lower()
    # a message of this channel with no picture indexed, and a link that is no link
    assert "I have no indexed picture in the message general/42" in _refused(
        bot, f"/blend images: {red} links: general/42")
    assert "is not a message link" in _refused(bot, f"/blend images: {red} links: https://example.com/a/b")
    # a picture posted where this user cannot read
    posted = bot.ask(f"/post {green}")
    elsewhere = LocalAdapter(bot.app, out=io.StringIO(), output_dir=tmp_path / "out", channel_id="random")
    assert f"{posted.data['permalink']} is in a channel you can't see" in _refused(
        elsewhere, f"/blend images: {red} links: {posted.data['permalink']}")
    assert "another server" in _refused(
        bot, f"/blend images: {red} links: https://discord.com/channels/1/2/3")
    assert "needs a positive weight" in _refused(bot, f"/blend images: {red} {green} weights: -1 -1")


def test_a_blends_buttons_work_after_a_restart_and_keep_its_pictures(tmp_path, pictures):
    with TestBot(data_dir=tmp_path / "kept") as first_bot:
        blended = first_bot.ask(f"/blend images: {pictures['red']} {pictures['green']} weights: 2 1 {SMALL} seed: 3")
    assert not blended.error, blended.text
    variations = next(a for a in blended.actions if a.label == "Variations")
    with TestBot(data_dir=tmp_path / "kept") as restarted:  # a new process: nothing of the first in memory
        varied = restarted.ask(action_command(variations) + " steps: 2")
    assert not varied.error, varied.text
    assert varied.data["pictures"] == blended.data["pictures"] and varied.data["parent"] == blended.data["job"]
