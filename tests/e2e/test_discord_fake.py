"""The fake Discord against the real discord.py client: the fake must be faithful for the e2e tests to mean anything."""

from __future__ import annotations

import asyncio

import discord
import pytest
import yarl

from tests.fakes.discord_fake import BOT_TOKEN, MANAGE_GUILD, READ_MESSAGE_HISTORY, VIEW_CHANNEL, FakeDiscord
from tests.support.polling import wait_until_async


@pytest.fixture
def fake():
    fake = FakeDiscord().start()
    yield fake
    fake.stop()


def _point_discord_py_at(fake: FakeDiscord, monkeypatch) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))


async def _with_client(fake: FakeDiscord, body, intents: discord.Intents | None = None):
    intents = intents or discord.Intents.default()
    client = discord.Client(intents=intents, guild_ready_timeout=0.2)
    ready = asyncio.Event()
    client.event(_named("on_ready", ready.set))
    task = asyncio.create_task(client.start(BOT_TOKEN))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises why the client stopped
        assert ready.is_set(), "client not ready"
        return await body(client)
    finally:
        await client.close()
        waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)


def _named(name, fn):
    async def handler(*args):
        fn()
    handler.__name__ = name
    return handler


def test_discord_py_sees_the_fake_guild_and_computes_the_same_permissions(fake, monkeypatch):
    _point_discord_py_at(fake, monkeypatch)
    gid = fake.add_guild("Team")
    mods = fake.add_role(gid, "mods", MANAGE_GUILD)
    general = fake.add_channel(gid, "general")
    secret = fake.add_channel(gid, "secret", overwrites=[
        {"id": gid, "type": 0, "deny": VIEW_CHANNEL}, {"id": mods, "type": 0, "allow": VIEW_CHANNEL}])
    no_history = fake.add_channel(gid, "announcements", overwrites=[{"id": gid, "type": 0, "deny": READ_MESSAGE_HISTORY}])
    alice = fake.add_member(gid, "alice", roles=[mods])
    bob = fake.add_member(gid, "bob")

    async def body(client: discord.Client):
        guild = client.get_guild(int(gid))
        assert {c.name for c in guild.text_channels} == {"general", "secret", "announcements"}
        out = {}
        for user in (alice, bob):
            member = discord.Member(data={**fake.guilds[gid]["_members"][user["id"]]}, guild=guild,
                                    state=client._connection)
            for channel in guild.text_channels:
                out[(user["username"], channel.name)] = channel.permissions_for(member).value
        return out

    seen = asyncio.run(_with_client(fake, body))
    for (name, channel), value in seen.items():
        uid = {"alice": alice, "bob": bob}[name]["id"]
        cid = {"general": general, "secret": secret, "announcements": no_history}[channel]
        assert value == fake.permissions(gid, cid, uid), (name, channel)
    assert not seen[("bob", "secret")] & VIEW_CHANNEL and seen[("alice", "secret")] & VIEW_CHANNEL
    assert fake.identifies and fake.identifies[0]["token"] == BOT_TOKEN


def test_message_content_is_blanked_without_the_intent_and_refused_when_not_granted(fake, monkeypatch):
    _point_discord_py_at(fake, monkeypatch)
    gid = fake.add_guild()
    channel = fake.add_channel(gid, "general")
    carol = fake.add_member(gid, "carol")
    got: list[discord.Message] = []

    async def body(client: discord.Client):
        client.event(_named_msg(got))
        fake.post_message(channel, carol, "hello", files=[("a.png", b"\x89PNG....", "image/png")])
        await wait_until_async(lambda: got, timeout=5, what="the message to reach the client")
        return got

    asyncio.run(_with_client(fake, body))  # default intents: no message content
    assert got and got[0].content == "" and got[0].attachments == []

    fake.grant_message_content = False
    intents = discord.Intents.default()
    intents.message_content = True
    with pytest.raises(discord.PrivilegedIntentsRequired):
        asyncio.run(_with_client(fake, lambda c: asyncio.sleep(0), intents=intents))


def _named_msg(sink):
    async def on_message(message):
        sink.append(message)
    return on_message


def test_ids_are_snowflakes_that_carry_their_creation_time(fake):
    import time

    before = time.time()
    gid = fake.add_guild()
    channel = fake.add_channel(gid, "general")
    message = fake.post_message(channel, fake.add_member(gid, "dave"), "hi", files=[("a.png", b"x", "image/png")])
    after = time.time()
    ids = [gid, channel, message["id"], message["attachments"][0]["id"]]
    for made in ids:  # discord.py reads the creation time from the id's top bits, as from Discord's own
        assert before - 0.002 <= discord.utils.snowflake_time(int(made)).timestamp() <= after + 0.002, made
    assert ids == sorted(ids, key=int) and len(set(ids)) == len(ids)  # newer ids are larger: history relies on it


def test_the_cdn_sends_files_in_pieces_with_and_without_content_length(fake):
    import aiohttp

    from tests.fakes.cdn import photo_jpeg

    gid = fake.add_guild()
    channel = fake.add_channel(gid, "general")
    photo = photo_jpeg(1)
    message = fake.post_message(channel, fake.add_member(gid, "erin"), "", files=[
        ("a.jpg", photo, "image/jpeg"), ("b.jpg", photo, "image/jpeg")])

    async def fetch(url):
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            first = await response.content.read(len(photo) + 1)  # what a reader that stops early gets
            return response.content_length, first, first + await response.read()

    seen = [asyncio.run(fetch(a["url"])) for a in message["attachments"]]
    assert {length for length, _, _ in seen} == {len(photo), None}  # one with Content-Length, one chunked
    for _, first, whole in seen:
        assert len(first) < len(photo) and whole == photo
