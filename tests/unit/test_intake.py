"""bot.intake against the fake Discord's CDN: whole files however they are sent, the size limit
whatever was claimed, a cut-off download noticed, and the file hosts no setting can widen."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from bot.config import Settings
from bot.intake import Downloader, FileHosts
from engine.errors import UserError
from tests.fakes.cdn import Served, lying_file, photo_jpeg
from tests.fakes.discord_fake import FakeDiscord


@pytest.fixture
def cdn():
    fake = FakeDiscord().start()
    guild = fake.add_guild()
    fake.channel, fake.user = fake.add_channel(guild, "general"), fake.add_member(guild, "poster")
    yield fake
    fake.stop()


def _url(fake: FakeDiscord, served: Served) -> str:
    (attachment,) = fake.post_message(fake.channel, fake.user, "", files=[("f.jpg", served, "image/jpeg")])["attachments"]
    return attachment["url"]


def _fetch(fake: FakeDiscord, url: str, max_bytes: int = 25 * 2**20) -> bytes:
    downloader = Downloader(FileHosts(hosts={"cdn.discordapp.com"}, test_hosts=[f"127.0.0.1:{fake.port}"]),
                            platform="Discord", max_bytes=max_bytes, refusal="not a Discord file")

    async def run() -> bytes:
        try:
            return (await downloader.fetch(url)).data
        finally:
            await downloader.close()

    return asyncio.run(run())


def test_a_photo_arrives_whole_in_small_pieces_with_or_without_content_length(cdn):
    photo = photo_jpeg(1)
    for with_length in (True, False):
        assert _fetch(cdn, _url(cdn, Served(photo, "image/jpeg", content_length=with_length, chunk=4096))) == photo


def test_over_the_limit_is_refused_whatever_was_claimed(cdn):
    with pytest.raises(UserError, match=r"^That file is too big \(the limit is 2 MB\)\.$"):
        _fetch(cdn, _url(cdn, lying_file(b"\xff\xd8\xff", claimed=1000)), max_bytes=2 * 2**20)
    honest = Served(b"\0" * (3 * 2**20), "image/jpeg")  # Content-Length says 3 MB: refused before reading it
    with pytest.raises(UserError, match="too big"):
        _fetch(cdn, _url(cdn, honest), max_bytes=2 * 2**20)


def test_a_download_cut_off_midway_is_not_taken_for_the_file(cdn):
    photo = photo_jpeg(1)
    for with_length in (True, False):
        cut = Served(photo, "image/jpeg", content_length=with_length, cut_after=len(photo) // 3)
        with pytest.raises(UserError, match=r"^The download from 127\.0\.0\.1:\d+ was cut short; try again\.$"):
            _fetch(cdn, _url(cdn, cut))


def test_files_come_only_from_the_platforms_https_hosts_and_loopback_test_hosts():
    hosts = FileHosts(hosts={"cdn.discordapp.com"}, domains=("slack.com",), test_hosts=["127.0.0.1:8080"])
    for url in ("https://cdn.discordapp.com/a.png", "https://files.slack.com/x.png", "https://slack.com/x",
                "http://127.0.0.1:8080/a.png", "https://cdn.discordapp.com:443/a.png"):
        assert hosts.trusted(url), url
    for url in ("http://cdn.discordapp.com/a.png", "https://cdn.discordapp.com:8443/a.png",
                "https://cdn.discordapp.com.evil.io/a.png", "https://evil.io/cdn.discordapp.com/a.png",
                "https://user@cdn.discordapp.com/a.png", "https://notslack.com/x", "http://127.0.0.1:8081/a.png",
                "http://127.0.0.1/a.png", "http://localhost:8080/a.png", "ftp://cdn.discordapp.com/a.png"):
        assert not hosts.trusted(url), url


def test_the_test_file_hosts_setting_refuses_anything_but_loopback(tmp_path):
    assert Settings(_env_file=None, test_file_hosts="127.0.0.1:5, [::1]:6,localhost:7").test_file_hosts == [
        "127.0.0.1:5", "[::1]:6", "localhost:7"]
    for bad in ("files.evil.example:80", "10.0.0.1:80", "192.168.1.2:8080", "127.0.0.1", "0.0.0.0:80",
                "127.0.0.1:80/path", "user@127.0.0.1:80"):
        with pytest.raises(ValidationError, match="not a loopback HOST:PORT"):
            Settings(_env_file=None, test_file_hosts=bad)

    from tests.conftest import run_clipbot

    out = run_clipbot(tmp_path, "plugins", CLIPBOT_TEST_FILE_HOSTS="cdn.example.com:443")
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["clipbot: invalid setting CLIPBOT_TEST_FILE_HOSTS: Value error, "
                                       "'cdn.example.com:443' is not a loopback HOST:PORT (127.0.0.1:PORT, "
                                       "[::1]:PORT or localhost:PORT); it is only for tests that serve files "
                                       "from this machine"], out.stderr
