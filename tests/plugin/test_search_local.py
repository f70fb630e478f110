"""/search end to end on the embedded engine, against both index backends: the local chat posts
pictures (`/post`), the indexing hook batches them into the index, /search finds them; permissions,
deletion, duplicates, paging and backfill resumption through the real dispatch path."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image

from bot.commands import Attachment, Request
from bot.events import ChannelRemoved, ImagePosted, MessageDeleted
from bot.testing import TestBot
from tests.conftest import write_image
from tests.support.polling import wait_until

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
          "black": (5, 5, 5), "white": (250, 250, 250)}


@pytest.fixture(params=["embedded", "pgvector"])
def bot(request, tmp_path):
    extra = {"index_url": request.getfixturevalue("postgres_url")} if request.param == "pgvector" else {}
    with TestBot(data_dir=tmp_path / "data", channel_id="general", **extra) as test_bot:
        yield test_bot


@pytest.fixture
def pictures(tmp_path):
    return {name: write_image(tmp_path / f"{name}.png", size=(90, 70), color=rgb) for name, rgb in COLORS.items()}


def ask(bot, command: str, *, user: str = "ana", channel: str = "general", readable=("general",), space="local",
        admin=False, **options):
    """A request as an adapter builds it: a user in a channel, with the channels they may read."""
    request = Request(command=command, options=options, user_id=user, user_name=user, channel_id=channel,
                      platform="local", space_id=space, readable_channels=frozenset(readable), is_admin=admin,
                      conversation={"channel": channel})

    async def collect():
        return [r async for r in bot.app.handle(request)]

    return asyncio.run(collect())[-1]


def post_event(bot, path, *, channel="general", message="m1", space="local", author="ana", source_id="",
               posted_at=None):
    """An adapter's ImagePosted: bytes stored first, then the hook."""
    data = path.read_bytes()
    key = bot.app.engine.blobs.put(data)
    event = ImagePosted(platform="local", space_id=space, channel_id=channel, message_id=message, author_id=author,
                        posted_at=posted_at or time.time(), permalink=f"https://chat.example/{channel}/{message}",
                        attachments=(Attachment(key, path.name, "image/png", len(data), source_id),),
                        author_name=author.title())
    asyncio.run(bot.app.image_posted(event))
    return event


def stats(bot, space="local"):
    return ask(bot, "index", action="stats", readable=(), admin=True, space=space).data


def operator_stats(bot, space="local"):
    request = Request(command="index", options={"action": "stats"}, user_id="cli", platform="local",
                      space_id=space, is_admin=True)

    async def collect():
        return [r async for r in bot.app.handle(request)]

    return asyncio.run(collect())[-1].data


def test_post_then_search_in_the_local_chat(bot, pictures):
    for name in ("red", "green", "blue"):
        reply = bot.ask(f"/post {pictures[name]} a {name} square")
        assert not reply.error, reply.text
    reply = bot.ask(f"/search image: {pictures['green']}")
    assert not reply.error, reply.text
    results = reply.data["results"]
    assert [r["message_id"] for r in results][:1] == ["2"] and len(results) == 3
    assert results[0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert results[0]["permalink"] == "local://general/2" and results[0]["author"] == "test-user"
    [sheet] = reply.images
    with Image.open(io.BytesIO(sheet.data)) as im:
        assert im.format == "PNG" and im.width > 3 * 150  # three numbered cells
    assert "local://general/2" in reply.text  # numbered links to the original messages
    text_reply = bot.ask("/search a square in:all top: 2")
    assert len(text_reply.data["results"]) == 2
    assert [a.label for a in text_reply.actions][-1] == "More"
    printed = bot.output.getvalue()
    assert "[More] /search more:" in printed and "search.png" in printed


def test_nothing_indexed_says_so_clearly(bot):
    reply = bot.ask("/search whiteboard")
    assert not reply.error and reply.data["results"] == []
    assert "No pictures match" in reply.text and not reply.images


def test_duplicate_events_index_once_and_a_repost_is_one_embedding(bot, pictures):
    event = post_event(bot, pictures["red"], message="m1")
    asyncio.run(bot.app.image_posted(event))  # the adapter delivered it twice
    post_event(bot, pictures["red"], message="m2", channel="random")  # the same picture again elsewhere
    s = operator_stats(bot)
    assert (s["embeddings"], s["occurrences"]) == (1, 2)
    hits = ask(bot, "search", image=None, query="in:all", readable=("general", "random"))
    assert hits.error  # a filter alone is not a query
    reply = ask(bot, "search", query="red in:all", readable=("general", "random"))
    # the repost is a near-duplicate (cosine 1): one result, the newest, "+1 similar"; its button lists both
    assert [(r["message_id"], r["similar"]) for r in reply.data["results"]] == [("m2", 1)]
    expand = next(a for a in reply.actions if a.label == "1: +1 similar")
    both = ask(bot, expand.command, readable=("general", "random"), **expand.options)
    assert sorted(r["message_id"] for r in both.data["results"]) == ["m1", "m2"]


def test_indexed_pictures_and_query_pictures_leave_the_blob_store(bot, pictures):
    from engine.blobs import BlobMissing

    event = post_event(bot, pictures["red"], message="m1")
    assert operator_stats(bot)["occurrences"] == 1
    with pytest.raises(BlobMissing):  # in the index now: the bytes do not wait out CLIPBOT_BLOB_TTL
        bot.app.engine.blobs.get(event.attachments[0].key)
    key = bot.app.engine.blobs.put(pictures["red"].read_bytes())
    by_image = ask(bot, "search", image=Attachment(key, "red.png", "image/png", 1)).data["results"]
    assert [r["message_id"] for r in by_image] == ["m1"]
    with pytest.raises(BlobMissing):  # the query picture went with its job; "More" reuses the vector
        bot.app.engine.blobs.get(key)


def test_users_never_see_channels_they_cannot_read(bot, pictures):
    post_event(bot, pictures["red"], channel="general", message="g1")
    post_event(bot, pictures["blue"], channel="secret", message="s1")
    post_event(bot, pictures["green"], channel="general", message="x1", space="other-team")
    reply = ask(bot, "search", query="square in:all", readable=("general",))
    assert [r["message_id"] for r in reply.data["results"]] == ["g1"]
    assert "secret" not in reply.text and "s1" not in reply.text
    # asking for the secret channel by name is refused without saying whether it holds anything
    refused = ask(bot, "search", query="square in:#secret", readable=("general",))
    assert refused.error and "channels you can read" in refused.text
    # "find similar" on a message in an unreadable channel answers as if it did not exist
    hidden = ask(bot, "search", similar="secret/s1", readable=("general",))
    missing = ask(bot, "search", similar="general/nope", readable=("general",))
    assert hidden.error and hidden.text == missing.text
    # status counts only readable channels
    status = ask(bot, "index", action="status", readable=("general",))
    assert status.data["by_channel"] == {"general": 1} and "secret" not in status.text
    assert "embeddings" not in status.data
    # the other space is invisible
    assert [r["message_id"] for r in ask(bot, "search", query="square in:all", readable=("general", "secret"),
                                         space="other-team").data["results"]] == ["x1"]


def test_the_more_button_pages_with_the_clickers_permissions(bot, pictures):
    for i, name in enumerate(COLORS):
        post_event(bot, pictures[name], channel="general" if i % 2 else "design", message=f"m{i}")
    first = ask(bot, "search", query="a picture in:all", top=2, readable=("general", "design"))
    more = next(a for a in first.actions if a.label == "More")
    second = ask(bot, more.command, readable=("general", "design"), **more.options)
    seen = [r["message_id"] for r in first.data["results"] + second.data["results"]]
    numbered = [line for line in second.text.splitlines() if line[:1].isdigit()]
    assert len(seen) == 4 and len(set(seen)) == 4 and numbered[0].startswith("3. ")
    # the same button clicked by someone who reads only #general shows only #general
    clicked = ask(bot, more.command, readable=("general",), **more.options)
    assert {r["channel"] for r in clicked.data["results"]} <= {"general"}


def test_deleting_a_message_or_leaving_a_channel_removes_its_pictures(bot, pictures):
    post_event(bot, pictures["red"], channel="general", message="m1")
    post_event(bot, pictures["blue"], channel="general", message="m2")
    post_event(bot, pictures["green"], channel="random", message="m3")
    asyncio.run(bot.app.message_deleted(MessageDeleted("local", "local", "general", "m1")))
    asyncio.run(bot.app.channel_removed(ChannelRemoved("local", "local", "random")))
    results = ask(bot, "search", query="square in:all", readable=("general", "random")).data["results"]
    assert [r["message_id"] for r in results] == ["m2"]
    s = operator_stats(bot)
    assert (s["embeddings"], s["occurrences"]) == (1, 1)


def test_a_picture_deleted_before_it_was_indexed_never_appears(bot, pictures):
    data = pictures["red"].read_bytes()
    event = ImagePosted("local", "local", "general", "m9", "ana", time.time(), "",
                        (Attachment(bot.app.engine.blobs.put(data), "red.png", "image/png", len(data)),))
    queue = bot.app.face.pending("search")
    assert queue.push([])  # hold the lease, as a busy drain job would: nothing gets indexed yet
    asyncio.run(bot.app.image_posted(event))
    assert queue.size() == 1
    asyncio.run(bot.app.message_deleted(MessageDeleted("local", "local", "general", "m9")))
    queue.abandon()
    post_event(bot, pictures["blue"], message="m10")  # the next post drains both
    results = ask(bot, "search", query="square").data["results"]
    assert [r["message_id"] for r in results] == ["m10"]


class FlakyHistory:
    """The local chat's history, failing once on its third page (a dropped connection)."""

    def __init__(self, inner):
        self.inner, self.calls, self.failed = inner, [], False

    async def history(self, space_id, channel_id, cursor, limit):
        self.calls.append(cursor)
        if len(self.calls) == 3 and not self.failed:
            self.failed = True
            raise ConnectionError("connection reset")
        return await self.inner.history(space_id, channel_id, cursor, limit)


def test_backfill_resumes_after_an_interruption(tmp_path, pictures):
    from bot.adapters.local import LocalHistory

    with TestBot(data_dir=tmp_path / "data", channel_id="general", plugins=["localchat"]) as before:
        for i in range(7):  # history made while /search was not installed
            path = write_image(tmp_path / f"p{i}.png", size=(60 + i, 50), color=(30 * i, 90, 200 - 20 * i))
            assert not before.ask(f"/post {path}").error
    with TestBot(data_dir=tmp_path / "data", channel_id="general") as bot:
        assert bot.ask("/search a picture").data["results"] == []
        source = FlakyHistory(LocalHistory(bot.app))
        bot.app.history_sources["local"] = source
        bot.app.plugin_settings("search").backfill_page = 2
        bot.app.plugin_settings("search").backfill_delay = 0
        bot.app.plugin_settings("search").duplicate_cosine = 1.0  # close colours: counted one by one here
        failed = bot.send("/index backfill")
        assert failed[-1].error and "resume after 4 messages" in failed[-1].text
        assert any(r.progress is not None for r in failed)
        done = bot.ask("/index backfill")
        assert not done.error and done.data["messages"] == 7 and done.data["queued"] == 7
        assert source.calls[3] == source.calls[2] != None  # noqa: E711 - resumed from the saved cursor
        results = bot.ask("/search a picture top: 10").data["results"]
        assert sorted(int(r["message_id"]) for r in results) == list(range(1, 8))
        status = bot.ask("/index status")
        assert status.data["backfills"]["general"]["done"] is True
        again = bot.ask("/index backfill")  # a finished backfill walks again; nothing is indexed twice
        assert again.data["queued"] == 7 and len(bot.ask("/search a picture top: 20").data["results"]) == 7


def test_weighted_queries_and_filters_reach_the_index(bot, pictures):
    old = time.time() - 30 * 86400
    post_event(bot, pictures["red"], message="old", posted_at=old, author="bo")
    post_event(bot, pictures["blue"], message="new", author="ana")
    recent = ask(bot, "search", query="square +blue -red past 7 days").data["results"]
    assert [r["message_id"] for r in recent] == ["new"]
    by_bo = ask(bot, "search", query="square from:<@bo>").data["results"]
    assert [r["message_id"] for r in by_bo] == ["old"]
    by_name = ask(bot, "search", query="square from:@BO").data["results"]  # display name "Bo", any case
    assert [r["message_id"] for r in by_name] == ["old"]
    assert ask(bot, "search", query="square from:@nobody").data["results"] == []
    bad = ask(bot, "search", query="square before:yesterday-ish")
    assert bad.error and "2024-05-31" in bad.text


def test_bad_input_is_one_clear_line(bot, tmp_path):
    assert "Tell me what to look for" in bot.ask("/search").text
    assert bot.ask("/search cats top: 99").error
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    assert "isn't an image" in bot.ask(f"/post {not_image}").text
    assert "Only admins" in ask(bot, "index", action="backfill").text


def test_a_model_change_reembeds_the_index_in_the_background(tmp_path, pictures):
    """Pictures embedded by another model are found again once the worker re-embeds them from
    their stored previews; until then a search says it is re-indexing."""
    import numpy as np

    from engine.index import Occurrence
    from plugins.search.pipeline import content_hash
    from plugins.search.sheet import make_preview
    from engine.index import process_index

    with TestBot(data_dir=tmp_path / "data", channel_id="general") as bot:
        index = process_index(bot.app.settings)
        old = {}
        for i, name in enumerate(("red", "blue")):
            data = pictures[name].read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                old[content_hash(data)] = (np.random.default_rng(i).standard_normal(48), make_preview(im))
        index.add("local", "old-model", old, [Occurrence("local", "general", f"m{i}", h)
                                              for i, h in enumerate(old)])
        bot.app.engine.store.set("clipbot:search:model", "old-model")  # the worker last ran another model
        first = bot.ask(f"/search image: {pictures['blue']}")  # notices the change, starts re-embedding
        assert not first.error, first.text
        wait_until(lambda: not operator_stats(bot)["stale"], timeout=60, what="the re-embedding to finish", every=0.1)
        found = bot.ask(f"/search image: {pictures['blue']}").data["results"]
        assert [r["message_id"] for r in found] == ["m1", "m0"] and found[0]["score"] > 0.95
        assert operator_stats(bot)["embeddings"] == 2
