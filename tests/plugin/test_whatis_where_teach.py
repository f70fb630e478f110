"""/whatis explain: yes, the Where? button (/where), /labels teach and `unsure`, through the local
chat on the embedded engine with the tiny-test CLIP."""

import asyncio
import io

from PIL import Image

from bot.adapters.local import action_command
from plugins.whatis import parse_message_refs
from tests.support.mascot import mascot_file


def final(local, line):
    replies = asyncio.run(local.handle_line(line))
    assert replies[-1].final
    return replies[-1]


def test_explain_yes_adds_a_heat_map_per_top_label(local, red_png):
    reply = final(local, f"/whatis {red_png} labels: cat, dog, person, car explain: yes")
    assert not reply.error, reply.text
    assert [i.filename for i in reply.images] == ["whatis.png", "whatis-where-1.png", "whatis-where-2.png",
                                                  "whatis-where-3.png"]
    explained = reply.data["explain"]
    assert [e["label"] for e in explained] == [item["label"] for item in reply.data["labels"][:3]]
    assert [e["heatmap"] for e in explained] == ["whatis-where-1.png", "whatis-where-2.png", "whatis-where-3.png"]
    assert isinstance(reply.data["unsure"], bool)
    with Image.open(io.BytesIO(reply.images[1].data)) as heat:
        assert heat.format == "PNG" and heat.size == (384, 384)
    assert "Where? heat maps (maskclip) for: " in reply.text
    assert not reply.actions  # explained already: no Where? button


def test_where_button_explains_the_same_picture_and_labels_later(local, red_png):
    answer = final(local, f"/whatis {red_png} labels: cat, dog, person")
    (button,) = answer.actions
    assert button.label == "Where?" and button.command == "where" and set(button.options) == {"picture"}
    clicked = final(local, action_command(button))  # what a click dispatches: a pre-filled command
    assert not clicked.error, clicked.text
    assert [e["label"] for e in clicked.data["explain"]] == [item["label"] for item in answer.data["labels"]]
    assert clicked.data["labels"] == answer.data["labels"]  # the same picture, the same answer
    gone = final(local, "/where picture: 0123456789abcdef")
    assert gone.error and "no longer kept" in gone.text


def test_taught_label_is_recognised_by_whatis(local, tmp_path):
    assert not final(local, "/labels set cat, dog, person").error
    probe = mascot_file(tmp_path, 5)
    before = final(local, f"/whatis {probe}")
    assert before.data["labels"][0]["label"] != "mascot"
    examples = " ".join(str(mascot_file(tmp_path, shift)) for shift in range(3))
    taught = final(local, f"/labels teach mascot images: {examples}")
    assert not taught.error, taught.text
    assert taught.data == {"set": "default", "label": "mascot", "examples": 3,
                           "labels": ["cat", "dog", "person", "mascot"], "skipped": []}
    after = final(local, f"/whatis {probe}")
    assert after.data["labels"][0]["label"] == "mascot" and after.data["unsure"] is False
    assert "Taught from examples: mascot." in after.text
    explained = final(local, f"/whatis {probe} explain: yes")  # a taught label has a heat map too
    assert explained.data["explain"][0]["label"] == "mascot"


def test_teach_from_an_indexed_message(local, tmp_path):
    assert not final(local, "/labels set cat, dog name: pets").error
    added = final(local, f"/index add images: {mascot_file(tmp_path, 1)} message_id: M-mascot")
    assert not added.error, added.text
    taught = final(local, "/labels teach mascot examples: M-mascot nowhere/M-missing into: pets")
    assert not taught.error, taught.text
    assert taught.data["examples"] == 1 and taught.data["labels"] == ["cat", "dog", "mascot"]
    assert taught.data["skipped"] == ["no picture from message M-missing in a channel you can read"]
    answer = final(local, f"/whatis {mascot_file(tmp_path, 4)} labels: pets")
    assert answer.data["labels"][0]["label"] == "mascot"


def test_teach_mistakes_are_clear(local, embedded, red_png, tmp_path):
    for line, message in [
        ("/labels teach mascot", "needs 1 to 10 example pictures"),
        (f"/labels teach images: {red_png}", "Name the label to teach"),
        (f"/labels teach a, b images: {red_png}", "no commas"),
        ("/labels teach mascot examples: https://example.com/x", "can't read that message link"),
        ("/labels teach mascot examples: M-none", "needs 1 to 10 example pictures I can read"),
    ]:
        reply = final(local, line)
        assert reply.error and message in reply.text, (line, reply.text)
    from bot.adapters.local import LocalAdapter

    user = LocalAdapter(embedded, out=io.StringIO(), output_dir=tmp_path, channel_id="c-user", is_admin=False)
    assert "Only admins" in final(user, f"/labels teach mascot images: {red_png}").text


def test_message_links_name_channel_and_message():
    assert parse_message_refs("https://discord.com/channels/1/22/333, C9/M1 M2 "
                              "https://team.slack.com/archives/C0ABC/p1700000000123456") == [
        {"channel_id": None, "message_id": "333"}, {"channel_id": "C9", "message_id": "M1"},
        {"channel_id": None, "message_id": "M2"}, {"channel_id": "C0ABC", "message_id": "1700000000.123456"}]


def test_where_button_works_after_a_restart_and_its_picture_waits_on_disk_not_in_memory(tmp_path, red_png):
    """On the embedded engine a finished /whatis's kept picture moves from memory to the data dir
    when the job ends, for the day Where? promises (not the shorter job record TTL)."""
    import time

    from bot.testing import TestBot

    with TestBot(data_dir=tmp_path, job_ttl=60) as bot:
        answer = bot.ask(f"/whatis {red_png} labels: cat, dog, person")
        (button,) = answer.actions
        key = button.options["picture"]
        live = bot.app.engine.blobs.live
        assert key not in live._items  # not held in memory for a day
    kept = tmp_path / "results" / key
    assert kept.is_file() and kept.stat().st_mtime > time.time() + 86400 - 600  # Where? keeps it a day
    with TestBot(data_dir=tmp_path, job_ttl=60) as bot:  # a new process: nothing of the first in memory
        clicked = bot.ask(action_command(button))
    assert not clicked.error, clicked.text
    assert clicked.data["labels"] == answer.data["labels"]
