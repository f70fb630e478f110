"""Real-size photos through `clipbot run` and the shell, served by the fake Discord's CDN the way a
CDN serves them (small pieces with pauses, with and without Content-Length): every surface that
takes a picture reads it whole, and a file larger than it claimed is refused with the size message."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.e2e.test_discord_e2e import _answer, _search_until, whatis_answer
from tests.fakes.cdn import lying_file, photo_jpeg
from tests.fakes.discord_fake import EPHEMERAL, FakeDiscord

LIMIT_MB = 25  # Settings.max_image_bytes by default


def _refusal(fake: FakeDiscord, channel: str, record) -> str:
    found = fake.wait_for(lambda f: [m for m in f.messages[channel].values()
                                     if m.get("interaction_metadata", {}).get("id") == record.id
                                     and m["flags"] & EPHEMERAL], 90, "an ephemeral refusal")
    return found[0]["content"]


def _posted_event(bot, message_id: str) -> dict:
    return bot.world.fake.wait_for(lambda f: next((e for e in bot.events() if e.get("posted") == message_id), None),
                                   90, f"image_posted for {message_id}")


def test_real_photos_are_read_whole_by_whatis_the_menu_and_the_index(world, start_bot):
    bot = start_bot()
    fake = world.fake
    saved = _answer(fake, fake.slash(world.guild, world.general, world.mod, "labels",
                                     {"action": "set", "labels": "cat, dog, tree"}))
    assert "Saved 3 labels" in saved["content"]
    first, second = photo_jpeg(1), photo_jpeg(2)
    assert 3_000_000 < len(first) < 8_000_000 and 3_000_000 < len(second) < 8_000_000

    answer = _answer(fake, fake.slash(world.guild, world.general, world.alice, "whatis",
                                      attachments={"image": ("IMG_0001.jpg", first, "image/jpeg")}), "/whatis",
                     until=whatis_answer)
    assert "Looks like" in answer["content"] or "not sure" in answer["content"], answer["content"]
    assert answer["attachments"], "the answer carries its chart"

    posted = fake.post_message(world.general, world.alice, "holiday", files=[("IMG_0002.jpg", second, "image/jpeg")])
    menu = _answer(fake, fake.context_menu(world.guild, world.general, world.mod, "What is this?", posted["id"]),
                   until=whatis_answer)
    assert "Looks like" in menu["content"] or "not sure" in menu["content"], menu["content"]

    (stored,) = _posted_event(bot, posted["id"])["files"]  # what the index got: every byte of the photo
    assert stored["size"] == len(second) and stored["sha256"] == hashlib.sha256(second).hexdigest()
    _search_until(fake, world, world.alice, "picture", lambda text: posted["id"] in text, "the posted photo")


def test_a_file_larger_than_it_claims_is_refused_with_the_size_message(world, start_bot):
    bot = start_bot()
    fake = world.fake
    huge = lying_file(photo_jpeg(3)[:100_000])  # says 1,000 bytes; the CDN sends 100 MB
    record = fake.slash(world.guild, world.general, world.alice, "whatis",
                        attachments={"image": ("small.jpg", huge, "image/jpeg")})
    text = _refusal(fake, world.general, record)
    assert "too big" in text and f"{LIMIT_MB} MB" in text, text

    posted = fake.post_message(world.general, world.alice, "tiny, honest", files=[("small.jpg", huge, "image/jpeg")])
    fake.wait_for(lambda f: "not indexing small.jpg" in bot.log(), 90, "the refusal logged")
    assert f"not indexing small.jpg from message {posted['id']}: That file is too big" in bot.log()
    assert not any(e.get("posted") == posted["id"] for e in bot.events())


@pytest.mark.slow
def test_backfill_from_the_shell_stores_real_photos_whole(world, tmp_path):
    from tests.conftest import run_clipbot
    from tests.fakes.discord_fake import BOT_TOKEN

    fake = world.fake
    photos = [photo_jpeg(4), photo_jpeg(5)]
    old = [fake.post_message(world.general, world.alice, f"trip {i}", files=[(f"trip{i}.jpg", p, "image/jpeg")])
           for i, p in enumerate(photos)]
    env = {"DISCORD_TOKEN": BOT_TOKEN, "CLIPBOT_DISCORD_API_BASE": fake.api_base,
           "CLIPBOT_TEST_FILE_HOSTS": f"127.0.0.1:{fake.port}", "CLIPBOT_SEARCH_BACKFILL_DELAY": "0"}
    where = ["--platform", "discord", "--space", world.guild, "--channel", world.general]
    out = run_clipbot(tmp_path / "data", "index", "backfill", *where, "--json", **env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["queued"] == 2, out.stdout
    # two photos are near-duplicates to the random model: count them one by one (collapsing off)
    found = json.loads(run_clipbot(tmp_path / "data", "search", *where, "--top", "10", "--json", "picture",
                                   CLIPBOT_SEARCH_DUPLICATE_COSINE="1", **env).stdout)["results"]
    assert {r["message_id"] for r in found} == {m["id"] for m in old}
    downloads = [c for c in fake.calls if c.path.startswith(f"/attachments/{world.general}/")]
    assert len(downloads) == 2 and all(c.status == 200 for c in downloads)
