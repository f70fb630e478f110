"""Slack adapter parts against the fake Slack with the real slack_sdk client: backfill history,
rate limits, event dedupe, file-host trust, Block Kit rendering, per-channel pacing."""

from __future__ import annotations

import asyncio
import time

import pytest

from bot.actions import decode_action
from bot.adapters.slack.files import FileFetcher, SlackHistory, permalink
from bot.adapters.slack.post import ChannelPacer, _chunks, blocks_for
from bot.commands import Action
from engine.blobs import MemoryBlobStore
from tests.fakes.slack_fake import FakeSlack
from tests.support.pictures import png_bytes


def _png() -> bytes:
    return png_bytes((1, 2, 3), (8, 8))


@pytest.fixture
def fake(slack_fake):
    return slack_fake


def _fetcher(fake, token=None, **limits):
    """The bot's file fetcher, with the fake's CDN opted in as a test file host."""
    limits = {"max_bytes": 10**6, "max_pixels": 10**6, **limits}
    return FileFetcher(token or fake.bot_token, test_hosts=[fake.file_host], **limits)


def _client(fake):
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=5))
    return client


def test_backfill_pages_through_history_resumably_and_waits_out_rate_limits(fake):
    pictures = []
    for i in range(5):
        message = fake.post_as_user("C1", "U1", f"m{i}", files=[fake.add_file(_png(), f"p{i}.png", user="U1")])
        pictures.append(message["ts"])
        fake.post_as_user("C1", "U1", "text only")
    fake.rate_limit("conversations.history", times=1, retry_after=1)
    blobs = MemoryBlobStore()

    async def walk():
        fetcher = _fetcher(fake)
        history = SlackHistory(_client(fake), fetcher, blobs, _url)
        seen, cursor, pages = [], None, 0
        while True:
            events, cursor = await history.history("T0FAKE", "C1", cursor, 4)
            seen += events
            pages += 1
            if cursor is None:
                break
        await fetcher.close()
        return seen, pages

    async def _url():
        return "https://fake.slack.com/"

    seen, pages = asyncio.run(walk())
    assert [e.message_id for e in seen] == pictures[::-1]  # newest first, each once
    assert pages == 3 and len(fake.calls_to("conversations.history")) == 4  # one 429 retried after Retry-After
    assert blobs.get(seen[0].attachments[0].key) == _png()
    assert seen[0].permalink == permalink("https://fake.slack.com/", "C1", pictures[-1])


def test_login_page_instead_of_a_file_is_a_clear_error(fake):
    from engine.errors import UserError

    info = fake.add_file(_png(), "p.png")

    async def fetch(token):
        fetcher = _fetcher(fake, token)
        try:
            return await fetcher.fetch(info["url_private"])
        finally:
            await fetcher.close()

    with pytest.raises(UserError, match="files:read"):
        asyncio.run(fetch("xoxb-without-files-read"))
    assert asyncio.run(fetch(fake.bot_token)) == (_png(), "image/png")


def test_redirects_are_followed_only_within_slack(fake):
    from urllib.parse import quote

    from engine.errors import UserError

    info = fake.add_file(_png(), "p.png")

    async def fetch(url):
        fetcher = _fetcher(fake)
        try:
            return await fetcher.fetch(url)
        finally:
            await fetcher.close()

    assert asyncio.run(fetch(f"{fake.base}/redirect?to={quote(info['url_private'])}"))[0] == _png()
    with pytest.raises(UserError, match="not on Slack"):  # never followed, so the token stays here
        asyncio.run(fetch(f"{fake.base}/redirect?to={quote('http://203.0.113.9/x.png')}"))


def test_bot_token_only_goes_to_slack_hosts():
    fetcher = FileFetcher("xoxb-t", max_bytes=1, max_pixels=1, test_hosts=["127.0.0.1:5000"])
    assert fetcher.trusted("https://files.slack.com/files-pri/T-F/x.png")
    assert fetcher.trusted("http://127.0.0.1:5000/files-pri/F/x.png")  # opted in by CLIPBOT_TEST_FILE_HOSTS
    for url in ("https://evil.example/x.png", "http://files.slack.com/x.png", "https://slack.com.evil.io/x",
                "https://files.slack.com@evil.io/x.png", "http://127.0.0.1:5001/files-pri/F/x.png",
                "https://files.slack.com:8443/x.png"):
        assert not fetcher.trusted(url), url


def test_blocks_carry_encoded_actions_and_respect_slack_limits():
    text = "\n".join(["x" * 2000] * 4)
    blocks = blocks_for(text, (Action("Reroll", "imagine", {"prompt": "a fox", "seed": 3}, "danger"),
                               Action("Plain", "help")))
    sections = [b for b in blocks if b["type"] == "section"]
    assert len(sections) == 4 and all(len(b["text"]["text"]) <= 3000 for b in sections)
    first, second = blocks[-1]["elements"]
    decoded = decode_action(first["value"])
    assert (decoded.command, decoded.options) == ("imagine", {"prompt": "a fox", "seed": 3})
    assert first["style"] == "danger" and "style" not in second  # Slack has no "secondary" style
    assert first["action_id"] != second["action_id"]
    assert _chunks("a\nb", 3000) == ["a\nb"] and _chunks("y" * 7000, 3000) == ["y" * 3000, "y" * 3000, "y" * 1000]


def test_channel_pacer_spaces_writes_per_channel_only():
    async def scenario():
        pacer = ChannelPacer(0.2)
        stamps: dict[str, list[float]] = {"A": [], "B": []}

        async def write(channel):
            async with pacer.slot(channel):
                stamps[channel].append(time.monotonic())

        await asyncio.gather(*(write(c) for c in "AAAB"))
        return stamps

    stamps = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(stamps["A"], stamps["A"][1:])]
    assert all(gap >= 0.19 for gap in gaps)  # ordering property of the pacer, not a speed goal
    assert stamps["B"][0] < stamps["A"][1]  # another channel does not queue behind A


def test_deploy_manifest_has_every_builtin_command_shortcut_event_and_scope(tmp_path):
    import yaml

    from bot.adapters.slack.manifest import BOT_EVENTS, BOT_SCOPES, manifest, slack_specs, slash_name
    from bot.plugins import BUILTIN_PLUGINS, build_plugin_manager
    from tests.conftest import ROOT, make_settings

    specs = slack_specs(build_plugin_manager(make_settings(tmp_path)), plugins=BUILTIN_PLUGINS)
    deployed = yaml.safe_load((ROOT / "deploy" / "slack-app-manifest.yml").read_text())
    expected = manifest(specs)
    hint = "regenerate: python -m bot.adapters.slack.manifest --yaml (keep the header comment)"
    assert deployed["features"]["slash_commands"] == expected["features"]["slash_commands"], hint
    assert deployed["features"]["shortcuts"] == expected["features"]["shortcuts"], hint
    assert deployed["oauth_config"]["scopes"]["bot"] == BOT_SCOPES
    assert deployed["settings"]["event_subscriptions"]["bot_events"] == BOT_EVENTS
    shortcuts = {s["callback_id"]: s for s in deployed["features"]["shortcuts"]}
    assert shortcuts["clipbot_whatis"]["name"] == "What is this?" and shortcuts["clipbot_whatis"]["type"] == "message"
    assert slash_name("search") == "/clip-search" and slash_name("whatis", "cb-") == "/cb-whatis"
    http = manifest(specs, request_url="https://bot.example/slack/events")
    assert not http["settings"]["socket_mode_enabled"]
    assert all(c["url"] == "https://bot.example/slack/events" for c in http["features"]["slash_commands"])


# ---- downloads from a CDN-like fake: whole files, the size limit, where the token goes -----------------
def _fetch_attachment(fetcher, blobs, info):
    async def run():
        try:
            return await fetcher.attachment(blobs, info)
        finally:
            await fetcher.close()

    return asyncio.run(run())


def test_a_real_photo_arrives_whole_with_and_without_content_length(fake):
    from tests.fakes.cdn import Served, photo_jpeg

    photo = photo_jpeg(1)
    blobs = MemoryBlobStore()
    for with_length in (True, False):
        info = fake.add_file(Served(photo, "image/jpeg", content_length=with_length), "IMG_0001.jpg", "image/jpeg")
        attachment = _fetch_attachment(_fetcher(fake, max_bytes=25 * 2**20, max_pixels=40_000_000), blobs, info)
        assert blobs.get(attachment.key) == photo and attachment.size == len(photo), with_length
        assert attachment.content_type == "image/jpeg"


def test_a_file_larger_than_it_claims_is_refused_with_the_size_message(fake):
    from engine.errors import UserError
    from tests.fakes.cdn import lying_file, photo_jpeg

    info = fake.add_file(lying_file(photo_jpeg(1)[:100_000]), "small.jpg", "image/jpeg")
    assert info["size"] == 1000
    with pytest.raises(UserError, match=r"too big \(the limit is 8 MB\)"):
        _fetch_attachment(_fetcher(fake, max_bytes=8 * 2**20, max_pixels=40_000_000), MemoryBlobStore(), info)


def test_the_api_url_does_not_make_its_host_a_file_host(fake):
    from engine.errors import UserError

    info = fake.add_file(_png(), "p.png")
    fetcher = FileFetcher(fake.bot_token, max_bytes=10**6, max_pixels=10**6)  # no CLIPBOT_TEST_FILE_HOSTS
    with pytest.raises(UserError, match="not on Slack"):
        _fetch_attachment(fetcher, MemoryBlobStore(), info)
    assert fake.downloads == []  # nothing was asked, so no token went anywhere


def test_a_redirect_to_another_host_does_not_carry_the_token(fake):
    from urllib.parse import quote

    from engine.errors import UserError

    other = FakeSlack().start()  # another trusted host (its own port): the token is for the first one only
    try:
        info = other.add_file(_png(), "p.png")
        fetcher = FileFetcher(fake.bot_token, max_bytes=10**6, max_pixels=10**6,
                              test_hosts=[fake.file_host, other.file_host])
        with pytest.raises(UserError, match="files:read"):  # the other host saw no token: its login page
            _fetch_attachment(fetcher, MemoryBlobStore(),
                              {**info, "url_private": f"{fake.base}/redirect?to={quote(info['url_private'])}",
                               "url_private_download": None})
        (redirect,) = fake.calls_to("redirect")
        assert redirect.params["authorization"] == f"Bearer {fake.bot_token}"  # the first hop: Slack itself
        assert other.downloads == [(info["id"], False)]
    finally:
        other.stop()


def test_an_unreachable_file_host_is_named_in_one_line():
    from engine.errors import UserError
    from tests.fakes.cdn import unreachable_port

    with unreachable_port() as port:
        fetcher = FileFetcher("xoxb-t", max_bytes=10**6, max_pixels=10**6, test_hosts=[f"127.0.0.1:{port}"])
        with pytest.raises(UserError, match=rf"could not reach Slack's file server at 127\.0\.0\.1:{port} "
                                            r"\(Connection refused\)"):
            _fetch_attachment(fetcher, MemoryBlobStore(), {"id": "F1", "name": "p.png",
                                                          "url_private": f"http://127.0.0.1:{port}/files-pri/F1/p.png"})
