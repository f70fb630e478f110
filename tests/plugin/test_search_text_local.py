"""/search by the words in pictures and messages, end to end on the local chat against both index
backends: /post a picture (its text read by real OCR in the indexing batch), find it by a word on
it, by its message's words, by an exact `text:` phrase; /index ocr off|on per space."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.testing import TestBot
from tests.conftest import write_image
from tests.support.pictures import text_png
from tests.support.polling import wait_until


@pytest.fixture(params=["embedded", "pgvector"])
def bot(request, tmp_path):
    extra = {"index_url": request.getfixturevalue("postgres_url")} if request.param == "pgvector" else {}
    with TestBot(data_dir=tmp_path / "data", channel_id="general", **extra) as test_bot:
        yield test_bot


def slide(tmp_path, name, *lines):
    path = tmp_path / f"slide-{name}.png"  # a name that is none of its words: they come from OCR
    path.write_bytes(text_png(list(lines)))
    return path


def post(bot, path, text=""):
    reply = bot.ask(f"/post {path} {text}".rstrip())
    assert not reply.error, reply.text


def test_a_word_on_a_picture_finds_it_and_the_result_shows_the_words(bot, tmp_path):
    post(bot, slide(tmp_path, "1", "Quarterly roadmap", "kiwi budget 2025"))
    post(bot, slide(tmp_path, "2", "Sprint retro", "action items"))
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        post(bot, write_image(tmp_path / f"plain{i}.png", size=(120, 90), color=color))
    reply = bot.ask("/search kiwi")
    results = reply.data["results"]
    assert results[0]["text"] == "kiwi budget 2025"  # the line that matched, read from the picture
    assert results[0]["message_text"] == ""
    assert "kiwi budget 2025" in reply.text.splitlines()[1]  # the first result's line shows the words
    # the rest still come, ranked by CLIP (to the random model, solid colours are near-duplicates)
    assert sum(1 + r["similar"] for r in results) == 5
    assert bot.ask("/search sprint retro").data["results"][0]["text"] == "Sprint retro"
    # a result found by its looks shows the first words on it
    by_image = bot.ask(f"/search image: {tmp_path / 'slide-2.png'}").data["results"]
    assert by_image[0]["text"] == "Sprint retro / action items"

    exact = bot.ask('/search text:"quarterly roadmap"').data["results"]
    assert [r["text"] for r in exact] == ["Quarterly roadmap"]
    assert bot.ask('/search text:"roadmap quarterly"').data["results"] == []  # words in order, or nothing
    refused = bot.ask('/search text:"!!"')
    assert refused.error and "text:" in refused.text


def test_the_message_text_finds_its_picture(bot, tmp_path):
    pictures = [write_image(tmp_path / f"p{i}.png", size=(120, 90), color=c)
                for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)])]
    for path, text in zip(pictures, ["lunch menu", "design review notes", "holiday photos", "release party"]):
        post(bot, path, text)
    results = bot.ask("/search the design review whiteboard").data["results"]
    assert results[0]["message_text"] == "design review notes"
    assert [r["message_text"] for r in bot.ask('/search text:"Release Party"').data["results"]] == ["release party"]
    # the More button keeps the text ranking: page 2 continues the fused order, no repeats
    first = bot.ask("/search holiday top: 2")
    more = next(a for a in first.actions if a.label == "More")
    second = bot.ask(f"/search more: {more.options['more']} page: 2")
    ids = [r["message_id"] for r in first.data["results"] + second.data["results"]]
    assert first.data["results"][0]["message_text"] == "holiday photos" and len(set(ids)) == 4


def test_ocr_switched_off_for_a_space_reads_no_new_pictures(bot, tmp_path):
    assert bot.ask("/index status").data["ocr"] is True
    off = bot.ask("/index ocr off")
    assert off.data["ocr"] is False and "no longer read" in off.text
    assert bot.ask("/index status").data["ocr"] is False
    post(bot, slide(tmp_path, "3", "mango smoothie"))
    assert bot.ask('/search text:"mango"').data["results"] == []
    bot.ask("/index ocr on")
    post(bot, slide(tmp_path, "4", "papaya salad"))
    assert [r["text"] for r in bot.ask('/search text:"papaya"').data["results"]] == ["papaya salad"]
    assert bot.ask("/index ocr maybe").error


def test_the_reembedding_after_a_model_change_reads_pictures_never_read(tmp_path):
    """A picture indexed before OCR (another model's embedding, no text) gets its words read from its
    stored preview when the worker re-embeds the index for the new model."""
    import numpy as np

    from engine.index import Occurrence, process_index
    from plugins.search.pipeline import content_hash
    from plugins.search.sheet import make_preview

    data = text_png(["Offsite agenda", "pelican lunch"])
    with TestBot(data_dir=tmp_path / "data", channel_id="general") as bot:
        index = process_index(bot.app.settings)
        with Image.open(io.BytesIO(data)) as im:
            preview = make_preview(im)
        index.add("local", "old-model", {content_hash(data): (np.ones(48), preview)},
                  [Occurrence("local", "general", "m0", content_hash(data))])
        bot.app.engine.store.set("clipbot:search:model", "old-model")  # the worker last ran another model
        assert not bot.ask("/search agenda").error  # notices the change, starts re-embedding
        wait_until(lambda: bot.ask('/search text:"pelican lunch"').data["results"], timeout=60,
                   what="the re-embedding to read the picture", every=0.2)
        assert index.texts("local", [content_hash(data)]) == {content_hash(data): "Offsite agenda\npelican lunch"}
