"""The Discord adapter in process, against the fake Discord: history pages for backfill, the
file-host allowlist, and what the adapter does when a token is refused."""

from __future__ import annotations

import asyncio

import discord
import pytest

from bot.adapters.discord import DiscordSettings
from bot.adapters.discord.client import DiscordAdapter, serve
from engine.errors import UserError
from tests.conftest import make_settings
from tests.fakes.discord_fake import BOT_TOKEN, FakeDiscord
from tests.support.pictures import png_bytes
from tests.support.polling import wait_until_async


def _png(shade: int) -> bytes:
    return png_bytes((shade, 0, 0), (24, 24))


@pytest.fixture
def fake(monkeypatch):
    fake = FakeDiscord().start()
    # serve() points discord.py at the fake through class attributes: restore them afterwards.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY",
                        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    yield fake
    fake.stop()


@pytest.fixture
def app(tmp_path):
    from bot.app import open_app

    with open_app(make_settings(tmp_path), start_worker=False) as app:
        yield app


def _both(tmp_path, *, test_file_hosts=(), **discord):
    """(clipbot's settings, the Discord adapter's): what `serve` and `DiscordAdapter` take."""
    return make_settings(tmp_path, test_file_hosts=list(test_file_hosts)), DiscordSettings(_env_file=None, **discord)


def _settings(tmp_path, fake: FakeDiscord):
    return _both(tmp_path, token=BOT_TOKEN, api_base=fake.api_base, gateway_url=fake.gateway_url,
                 test_file_hosts=[f"127.0.0.1:{fake.port}"])


async def _serving(app, settings, body):
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, *settings, stop))

    def ready() -> bool:
        if task.done():
            task.result()  # serve() failed: its exception, not a timeout
        return "discord" in app.history_sources and getattr(app.history_sources["discord"].adapter.client,
                                                            "is_ready", lambda: False)()

    await wait_until_async(ready, timeout=60, what="the Discord client to be ready")
    try:
        return await body(app.history_sources["discord"])
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def test_history_pages_through_a_channel_with_stored_images_and_a_resumable_cursor(fake, app, tmp_path):
    guild = fake.add_guild()
    channel = fake.add_channel(guild, "general")
    other_guild = fake.add_guild("Other")
    bob = fake.add_member(guild, "bob")
    posted = []
    for i in range(7):
        files = [(f"p{i}.png", _png(i * 30), "image/png")] if i % 2 == 0 else []
        posted.append((fake.post_message(channel, bob, f"message {i}", files=files), files))

    async def body(source):
        pages, cursor, events = 0, None, []
        while True:
            found, cursor = await source.history(guild, channel, cursor, 3)
            events += found
            pages += 1
            if cursor is None:
                return pages, events
            assert pages < 10

    pages, events = asyncio.run(_serving(app, _settings(tmp_path, fake), body))
    assert {c["name"] for c in fake.commands["global"]} >= {"help", "whatis", "What is this?"}  # no dev guild
    assert pages == 3
    with_images = [(m, files) for m, files in posted if files]
    assert sorted(e.message_id for e in events) == sorted(m["id"] for m, _ in with_images)
    for event in events:
        message, files = next((m, f) for m, f in with_images if m["id"] == event.message_id)
        (stored,) = event.attachments
        assert app.engine.blobs.get(stored.key) == files[0][1]
        assert event.space_id == guild and event.channel_id == channel and event.author_id == bob["id"]
        assert event.platform == "discord" and event.text == message["content"]
    history_calls = fake.find_calls("GET", rf"/channels/{channel}/messages")
    assert [c.query.get("before") for c in history_calls][0] is None and all(
        c.query.get("before") for c in history_calls[1:])

    async def wrong_space(source):
        with pytest.raises(UserError, match="not in this server"):
            await source.history(other_guild, channel, None, 3)

    asyncio.run(_serving(app, _settings(tmp_path, fake), wrong_space))


def test_attachments_come_only_from_discord_file_hosts(app, tmp_path):
    adapter = DiscordAdapter(app, *_both(tmp_path, token="x"))
    for url in ("http://127.0.0.1:9/a.png", "https://evil.example/cdn.discordapp.com/a.png",
                "https://cdn.discordapp.com.evil.example/a.png"):
        with pytest.raises(UserError, match="Discord's own file servers"):
            asyncio.run(adapter.attachment({"url": url, "filename": "a.png", "size": 10}))
    with pytest.raises(UserError, match="too big"):
        asyncio.run(adapter.attachment({"url": "https://cdn.discordapp.com/a.png", "filename": "a.png",
                                        "size": 10 ** 9}))
    proxied = DiscordAdapter(app, *_both(tmp_path, token="x", api_base="http://127.0.0.1:5/api/v10"))
    assert not proxied.files.hosts.trusted("http://127.0.0.1:5/attachments/1/2/a.png")  # an API proxy is no CDN
    assert proxied.files.hosts.trusted("https://cdn.discordapp.com/attachments/1/2/a.png")
    testing = DiscordAdapter(app, *_both(tmp_path, token="x", test_file_hosts=["127.0.0.1:5"]))
    assert testing.files.hosts.trusted("http://127.0.0.1:5/attachments/1/2/a.png")
    assert not testing.files.hosts.trusted("http://127.0.0.1:6/attachments/1/2/a.png")


def test_a_rejected_token_is_one_clear_error(fake, app, tmp_path):
    settings = _both(tmp_path, token="wrong", api_base=fake.api_base, gateway_url=fake.gateway_url)
    with pytest.raises(UserError, match="rejected DISCORD_TOKEN"):
        asyncio.run(serve(app, *settings, asyncio.Event()))


def test_the_api_base_does_not_make_its_host_a_file_host(fake, app, tmp_path):
    channel = fake.add_channel(fake.add_guild(), "general")
    posted = fake.post_message(channel, {"id": "1", "username": "u"}, "", files=[("a.png", _png(1), "image/png")])
    proxied = DiscordAdapter(app, *_both(tmp_path, token=BOT_TOKEN, api_base=fake.api_base))
    with pytest.raises(UserError, match="Discord's own file servers"):
        asyncio.run(proxied.attachment(posted["attachments"][0]))
    assert not fake.find_calls("GET", r"/attachments/.*"), "nothing is fetched from the API host"


def test_an_unreachable_discord_is_one_line_naming_the_host(app, tmp_path):
    from tests.fakes.cdn import unreachable_port

    with unreachable_port() as port:
        settings = _both(tmp_path, token=BOT_TOKEN, api_base=f"http://127.0.0.1:{port}/api/v10",
                         test_file_hosts=[f"127.0.0.1:{port}"])
        named = rf"^I could not reach Discord at 127\.0\.0\.1:{port} \(Connection refused\); check the network"
        with pytest.raises(UserError, match=named):  # `clipbot run` prints it as one line
            asyncio.run(serve(app, *settings, asyncio.Event()))

        from bot.adapters.discord.client import open_history

        async def backfill():
            async with open_history(app, *settings):
                pass

        with pytest.raises(UserError, match=named):  # `clipbot index backfill` from a shell
            asyncio.run(backfill())

        adapter = DiscordAdapter(app, *settings)

        async def download():
            try:
                await adapter.attachment({"url": f"http://127.0.0.1:{port}/attachments/1/2/a.png", "size": 10})
            finally:
                await adapter.files.close()

        with pytest.raises(UserError, match=rf"could not reach Discord's file server at 127\.0\.0\.1:{port} "
                                            r"\(Connection refused\)"):
            asyncio.run(download())


def test_an_attachment_is_stored_whole_or_not_at_all(fake, app, tmp_path):
    from tests.fakes.cdn import Served, photo_jpeg

    channel = fake.add_channel(fake.add_guild(), "general")
    photo = photo_jpeg(1)
    posted = fake.post_message(channel, {"id": "1", "username": "u"}, "", files=[
        ("whole.jpg", photo, "image/jpeg"),
        ("cut.jpg", Served(photo, "image/jpeg", cut_after=len(photo) // 2), "image/jpeg")])
    adapter = DiscordAdapter(app, *_settings(tmp_path, fake))

    async def take(found: dict):
        try:
            return await adapter.attachment(found)
        except UserError as exc:
            return exc
        finally:
            await adapter.files.close()

    whole, cut = posted["attachments"]
    stored = asyncio.run(take(whole))
    assert app.engine.blobs.get(stored.key) == photo and stored.size == len(photo)
    assert "cut short" in str(asyncio.run(take(cut)))
