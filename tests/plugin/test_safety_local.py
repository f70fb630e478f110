"""Safety through the real /imagine handler and worker (the local chat on an embedded engine, tiny
presets): the blocklist, the prompt's embedding check, and pictures blurred and spoilered, stopped
or allowed as the channel's policy says; /safety, /audit, `clipbot audit` and the Delete button.

A concept matches deterministically: it is the final picture of a run with a fixed seed, saved as
an example picture (`CLIPBOT_SAFETY_CONCEPTS=/path/concept.png=0.999`); the same run again draws
the same picture, whose image embedding is then the concept's own (cosine 1)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import uuid

import pytest
from PIL import Image

from bot.adapters.local import LocalAdapter, action_command
from tests.conftest import make_settings, run_clipbot, write_image

RUN = "/imagine a quiet lighthouse steps: 4 size: 32 every: 2 seed: 7 drawer: pixels"


@pytest.fixture(scope="module")
def safe_app(tmp_path_factory):
    """An app whose safety settings are the tests': a blocklist, a prompt concept, a picture concept."""
    from bot.app import open_app

    folder = tmp_path_factory.mktemp("safety")
    concept = write_image(folder / "lighthouse.png", size=(32, 32), color=(0, 0, 255))  # matches nothing yet
    env = {"CLIPBOT_SAFETY_BLOCKLIST": "gore=decapitated, nsfw=nude, nsfw=naked",
           "CLIPBOT_SAFETY_PROMPT_CONCEPTS": "forbidden dance=0.999",
           "CLIPBOT_SAFETY_CONCEPTS": f"{concept}=0.999"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        with open_app(make_settings(folder / "data")) as app:
            app.concept_file, app.data_dir = concept, folder / "data"
            yield app


def chat(app, *, user="ann", admin=True, channel=None) -> LocalAdapter:
    return LocalAdapter(app, out=io.StringIO(), output_dir=app.data_dir / "out", user_id=user, is_admin=admin,
                        channel_id=channel or f"c-{uuid.uuid4().hex[:8]}")


def say(adapter: LocalAdapter, line: str):
    return asyncio.run(adapter.handle_line(line))


def ask(app, request):
    async def go():
        return [r async for r in app.handle(request)]
    return asyncio.run(go())


def jobs(app) -> set[str]:
    return set(app.engine.book.store.keys("clipbot:job:"))


@pytest.mark.parametrize("prompt, rule", [
    ("a DÉCAPITATED knight", "gore"), ("a DECAPITATED statue", "gore"), ("n4k3d statue", "nsfw"),
    ("a nude:1 | blurry:-0.5", "nsfw"),
])
def test_a_blocklisted_prompt_is_refused_in_one_line_before_queueing_and_logged(safe_app, prompt, rule):
    local = chat(safe_app)
    before = jobs(safe_app)
    reply = say(local, f"/imagine {prompt} steps: 2 size: 32")[-1]
    assert reply.error and reply.ephemeral and reply.text == f"That prompt is not allowed here (rule: {rule})."
    assert jobs(safe_app) == before  # nothing was queued
    (entry,) = say(local, "/audit last: 5")[-1].data["entries"][:1]
    assert entry["action"] == "refused" and entry["rule"] == rule and entry["user"] == "ann"
    assert entry["channel"] == local.channel_id and prompt[:10] in entry["detail"]


def test_words_that_only_contain_a_blocked_word_pass(safe_app):
    local = chat(safe_app)
    reply = say(local, "/imagine nudewalk renaissance:1 | a decapitated:-1 steps: 2 size: 32 drawer: pixels")[-1]
    assert not reply.error, reply.text  # "nudewalk" is not "nude"; a negative weight pushes away


def test_a_prompt_whose_embedding_matches_a_concept_fails_in_the_worker(safe_app):
    local = chat(safe_app)
    reply = say(local, "/imagine forbidden dance steps: 2 size: 32 drawer: pixels")[-1]
    assert reply.error and reply.text == "That prompt is not allowed here (rule: forbidden dance)."
    entry = say(local, "/audit")[-1].data["entries"][0]
    assert entry["action"] == "refused" and entry["job_id"] and "cosine" in entry["detail"]


def test_a_matching_picture_is_blurred_and_spoilered_or_stopped_or_allowed_per_channel(safe_app):
    local = chat(safe_app)
    say(local, "/safety policy: allow")
    clean = say(local, RUN)[-1]
    assert not clean.error and not clean.images[0].spoiler, clean.text
    safe_app.concept_file.write_bytes(clean.images[0].data)  # the concept is now exactly this picture

    assert say(local, "/safety policy: default")[-1].data["policy"] == "blur"
    replies = say(local, RUN)
    blurred = replies[-1]
    assert not blurred.error, blurred.text
    assert blurred.images[0].spoiler and blurred.data["flagged"] == "lighthouse"
    assert "Blurred" in blurred.text and "rule: lighthouse" in blurred.text
    assert _sharpness(blurred.images[0].data) < _sharpness(clean.images[0].data) / 4
    last_snapshot = [i for r in replies[:-1] for i in r.images][-1]
    assert last_snapshot.spoiler and last_snapshot.data == blurred.images[0].data  # blurred before it was sent

    say(local, "/safety policy: stop")
    stopped = say(local, RUN)[-1]
    assert stopped.error and "That picture is not allowed here (rule: lighthouse)" in stopped.text

    nsfw = chat(safe_app, channel=f"nsfw-{uuid.uuid4().hex[:6]}")  # no policy set there: age-restricted allows
    allowed = ask(safe_app, dataclasses.replace(nsfw.request("imagine", _options(RUN)), channel_nsfw=True))[-1]
    assert not allowed.error and not allowed.images[0].spoiler and allowed.images[0].data == clean.images[0].data

    log = say(local, "/audit last: 10")[-1].data["entries"]
    actions = [e["action"] for e in log]
    assert actions[:5] == ["stopped", "policy", "blurred", "policy", "policy"]  # newest first
    assert [e["rule"] for e in log[:5]] == ["lighthouse", "stop", "lighthouse", "default", "allow"]
    assert log[0]["job_id"] and log[2]["job_id"] and "cosine 1.0" in log[2]["detail"]


def _options(line: str) -> dict:
    words = line.split()[1:]
    prompt = " ".join(words[: words.index("steps:")])
    rest = words[words.index("steps:"):]
    return {"prompt": prompt, **{rest[i].rstrip(":"): rest[i + 1] for i in range(0, len(rest), 2)}}


def _sharpness(png: bytes) -> float:
    """Mean absolute difference of neighbouring pixels: a blur drives it towards 0."""
    import numpy as np

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)
    return float(np.abs(np.diff(pixels, axis=1)).mean() + np.abs(np.diff(pixels, axis=0)).mean())


def test_safety_and_audit_are_for_admins_and_discord_allows_only_age_restricted_channels(safe_app):
    member = chat(safe_app, admin=False)
    assert "Only admins" in say(member, "/safety policy: allow")[-1].text
    assert "Only admins" in say(member, "/audit")[-1].text
    admin = chat(safe_app)
    on_discord = dataclasses.replace(admin.request("safety", {"policy": "allow"}), platform="discord", space_id="G")
    refused = ask(safe_app, on_discord)[-1]
    assert refused.error and "age-restricted" in refused.text
    allowed = ask(safe_app, dataclasses.replace(on_discord, channel_nsfw=True))[-1]
    assert not allowed.error and allowed.data["policy"] == "allow"
    shown = ask(safe_app, dataclasses.replace(on_discord, options={}, channel_nsfw=False))[-1]
    assert shown.data == {"policy": "allow", "channel": "allow"}  # set for the channel: it wins


def test_only_the_requester_or_an_admin_may_delete_a_result(safe_app):
    owner = chat(safe_app, user="ann", admin=False)
    final = say(owner, "/imagine a small boat steps: 2 size: 32 drawer: pixels")[-1]
    delete = next(a for a in final.actions if a.label == "Delete")
    assert delete.style == "danger" and delete.command == "delete"
    stranger = chat(safe_app, user="bob", admin=False, channel=owner.channel_id)
    refused = say(stranger, action_command(delete))[-1]
    assert refused.error and refused.ephemeral and "Only the person who asked" in refused.text
    assert "[deleted" not in stranger.out.getvalue()
    done = say(owner, action_command(delete))[-1]
    assert not done.error and done.text == "Deleted." and "[deleted: that answer is gone" in owner.out.getvalue()
    admin = chat(safe_app, user="root", admin=True, channel=owner.channel_id)
    assert say(admin, action_command(delete))[-1].text == "Deleted."
    entries = say(admin, "/audit last: 2")[-1].data["entries"]
    assert [(e["action"], e["rule"], e["by"], e["user"]) for e in entries] == [
        ("deleted", "admin", "root", "ann"), ("deleted", "request", "ann", "ann")]


@pytest.mark.slow
def test_the_cli_reads_the_audit_log_and_cannot_delete(safe_app):
    local = chat(safe_app)
    say(local, "/imagine a decapitated robot steps: 2 size: 32")
    out = run_clipbot(safe_app.data_dir, "audit", "--platform", "local", "--space", "local", "--last", "3", "--json")
    assert out.returncode == 0, out.stderr
    import json

    newest = json.loads(out.stdout)["entries"][0]
    assert newest["action"] == "refused" and newest["rule"] == "gore" and newest["channel"] == local.channel_id
    refused = run_clipbot(safe_app.data_dir, "delete", "0123abcd")
    assert refused.returncode == 2 and "Use the Delete button" in refused.stderr
