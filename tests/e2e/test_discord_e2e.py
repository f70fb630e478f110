"""`clipbot run` (the real discord.py client) against the fake Discord: commands, permissions, buttons,
threads and progress, the interaction token's lifetime, and the indexing hooks."""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Any, Callable

import pytest
from PIL import Image as PILImage

from tests.fakes.discord_fake import EPHEMERAL, MANAGE_THREADS, VIEW_CHANNEL, FakeDiscord, InteractionRecord
from tests.support.pictures import png_bytes, text_png
from tests.support.polling import wait_until
from tests.support.probe_plugin import PREFIX, noise_png

LOADING = 128  # message flag: the deferred "thinking..." placeholder


HUES = ((250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10))


def _png(color=(200, 30, 30), size=(96, 64)) -> bytes:
    return png_bytes(color, size)


def _answer(fake: FakeDiscord, record: InteractionRecord, what: str = "the answer",
            until: Callable[[dict], bool] | None = None) -> dict:
    """The interaction's original message once it holds an answer (not the loading placeholder;
    with `until`, not a progress edit either: a busy machine shows "preparing 3 labels: 80%")."""
    def done(f: FakeDiscord):
        if record.original_id is None:
            return None
        message = f.messages[record.channel_id].get(record.original_id)
        if not message or message["flags"] & LOADING:
            return None
        return message if until is None or until(message) else None

    return fake.wait_for(done, 90, what)


def whatis_answer(message: dict) -> bool:
    """A /whatis answer (its chart attached), not one of its progress edits."""
    return bool(message["attachments"]) and ("Looks like" in message["content"] or "not sure" in message["content"])


def _probe_data(message: dict) -> dict:
    assert message["content"].startswith(PREFIX), message["content"]
    return json.loads(message["content"][len(PREFIX):])


def test_commands_sync_to_the_dev_guild_with_types_and_admin_permissions(world, start_bot):
    start_bot()
    fake = world.fake
    (put,) = fake.find_calls("PUT", rf"/applications/{fake.app_id}/guilds/{world.guild}/commands")
    by_name = {c["name"]: c for c in put.json}
    assert {"help", "whatis", "labels", "probe", "What is this?", "describe", "Describe"} <= set(by_name)
    assert by_name["What is this?"]["type"] == 3 and by_name["Describe"]["type"] == 3
    assert [o["type"] for o in by_name["whatis"]["options"]] == [11, 3, 4, 5]
    assert by_name["probe_admin"]["default_member_permissions"] == "32"
    assert not fake.find_calls("PUT", rf"/applications/{fake.app_id}/commands")


def test_whatis_with_an_attachment_is_deferred_then_answered_with_a_chart(world, start_bot):
    start_bot()
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.alice, "whatis", {"labels": "red, green, blue"},
                        attachments={"image": ("red.png", _png(), "image/png")})
    message = _answer(fake, record, "the /whatis answer", until=whatis_answer)
    assert record.callback_type == 5  # deferred with "thinking"
    calls = fake.calls
    callback = next(i for i, c in enumerate(calls) if c.path.startswith(f"/interactions/{record.id}/"))
    download = next(i for i, c in enumerate(calls) if c.path.startswith(f"/attachments/{world.general}/"))
    assert callback < download, "the interaction must be deferred before any work"
    assert calls[callback].query.get("with_response")
    assert "Looks like" in message["content"] or "not sure" in message["content"]
    assert "red" in message["content"]
    (chart,) = message["attachments"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(chart["url"]))) as im:
        assert im.format == "PNG" and im.width > 100


def test_where_button_answers_with_heat_maps(world, start_bot):
    start_bot()
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.alice, "whatis", {"labels": "red, green, blue"},
                        attachments={"image": ("red.png", _png(), "image/png")})
    message = _answer(fake, record, "the /whatis answer", until=whatis_answer)
    where = _buttons(message)["Where?"]
    click = fake.click(world.guild, world.general, world.alice, message["id"], where)
    answer = _answer(fake, click, "the Where? answer", until=lambda m: len(m["attachments"]) > 1)
    names = [a["filename"] for a in answer["attachments"]]
    assert names == ["whatis.png", "whatis-where-1.png", "whatis-where-2.png", "whatis-where-3.png"]
    assert "Where? heat maps" in answer["content"]


def test_message_menu_what_is_this_answers_for_a_posted_image(world, start_bot):
    start_bot()
    fake = world.fake
    # The channel's own labels (an admin sets them through Discord) spare the ImageNet build.
    saved = _answer(fake, fake.slash(world.guild, world.general, world.mod, "labels",
                                     {"action": "set", "labels": "cat, dog, tree"}))
    assert "Saved 3 labels" in saved["content"]
    posted = fake.post_message(world.general, world.alice, "look", files=[("cat.png", _png((10, 200, 10)), "image/png")])
    record = fake.context_menu(world.guild, world.general, world.mod, "What is this?", posted["id"])
    message = _answer(fake, record, until=whatis_answer)
    assert message["attachments"] and ("Looks like" in message["content"] or "not sure" in message["content"])
    assert "tree" in message["content"]

    text_only = fake.post_message(world.general, world.alice, "no picture here")
    record = fake.context_menu(world.guild, world.general, world.mod, "What is this?", text_only["id"])
    followup = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                        if m.get("interaction_metadata", {}).get("id") == record.id
                                        and m["flags"] & EPHEMERAL], 30, "an ephemeral refusal")
    assert "no image" in followup[0]["content"]
    assert record.original_id not in fake.messages[world.general]  # the placeholder went


@pytest.mark.slow  # a bot start, and an /imagine thread
def test_message_menu_describe_answers_four_prompts_whose_buttons_start_imagine(world, start_bot):
    start_bot()
    fake = world.fake
    posted = fake.post_message(world.general, world.alice, "what would you call this?",
                               files=[("fox.png", _png((200, 120, 40)), "image/png")])
    record = fake.context_menu(world.guild, world.general, world.mod, "Describe", posted["id"])
    message = _answer(fake, record, "the /describe answer", until=lambda m: bool(m["components"]))
    buttons = _buttons(message)
    assert list(buttons) == [f"Imagine this #{i}" for i in range(1, 5)]
    prompt = json.loads(buttons["Imagine this #2"][len("cb1:"):])[1]["prompt"]
    assert prompt in message["content"] and "subjects:" in message["content"]

    fake.click(world.guild, world.general, world.alice, message["id"], buttons["Imagine this #2"])
    thread = _thread_of(fake, world.general, "/imagine ")
    assert thread["name"].startswith(f"/imagine {prompt[:20]}")  # the clicker's /imagine of that prompt


def test_requests_carry_the_members_readable_channels_and_admin_flag(world, start_bot):
    start_bot()
    fake = world.fake
    alice = _probe_data(_answer(fake, fake.slash(world.guild, world.general, world.alice, "probe")))
    mod = _probe_data(_answer(fake, fake.slash(world.guild, world.general, world.mod, "probe")))
    assert alice["platform"] == "discord" and alice["space"] == world.guild and alice["channel"] == world.general
    assert alice["user"] == world.alice["id"] and alice["name"] == "alice" and alice["admin"] is False
    assert world.general in alice["readable"] and world.private not in alice["readable"]
    assert mod["admin"] is True and {world.general, world.private} <= set(mod["readable"])
    assert alice["conversation"]["channel"] == world.general


def test_admin_only_commands_are_refused_server_side_for_members(world, start_bot):
    start_bot()
    fake = world.fake
    assert _answer(fake, fake.slash(world.guild, world.general, world.mod, "probe_admin"))["content"] == "admin ok"
    record = fake.slash(world.guild, world.general, world.alice, "probe_admin")
    refusal = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                       if m.get("interaction_metadata", {}).get("id") == record.id
                                       and m["flags"] & EPHEMERAL], 30, "an ephemeral refusal")
    assert "Only admins" in refusal[0]["content"]


def test_a_refused_long_admin_command_is_answered_privately_without_a_thread(world, start_bot):
    start_bot()
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.alice, "index", {"action": "backfill"})
    refusal = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                       if m.get("interaction_metadata", {}).get("id") == record.id
                                       and m["flags"] & EPHEMERAL], 30, "an ephemeral refusal")
    assert "Only admins can use /index backfill" in refusal[0]["content"]
    assert not fake.find_calls("POST", rf"/channels/{world.general}/messages/\d+/threads"), "no thread for a refusal"
    assert not [c for c in fake.channels.values() if c.get("parent_id") == world.general]
    public = [m["content"] for m in fake.messages[world.general].values() if not m["flags"] & EPHEMERAL]
    assert not any("Working on it" in t or "Only admins" in t for t in public), public
    assert record.original_id not in fake.messages[world.general]  # the "thinking..." placeholder went


@pytest.mark.slow
def test_a_button_click_after_a_bot_restart_runs_as_the_clicker(world, start_bot):
    fake = world.fake
    bot = start_bot()
    first = _answer(fake, fake.slash(world.guild, world.general, world.mod, "probe", {"n": 41}))
    (row,) = first["components"]
    (button,) = row["components"]
    assert button["label"] == "+1" and button["style"] == 1 and button["custom_id"].startswith("cb1:")
    assert bot.stop() == 0
    start_bot()
    click = fake.click(world.guild, world.general, world.alice, first["id"], button["custom_id"])
    data = _probe_data(_answer(fake, click, "the click's answer"))
    assert click.callback_type == 5
    assert data["n"] == 42 and data["user"] == world.alice["id"] and data["admin"] is False
    assert world.private not in data["readable"]


def test_posted_images_reach_the_index_hook_with_their_bytes_and_deletes_follow(world, start_bot):
    bot = start_bot()
    fake = world.fake
    red, green = _png(), _png((0, 255, 0), (40, 40))
    posted = fake.post_message(world.private, world.mod, "two pictures", files=[
        ("red.png", red, "image/png"), ("notes.txt", b"hello", "text/plain"), ("green.png", green, "image/png"),
        ("broken.png", b"\x89PNG\r\n\x1a\n garbage", "image/png")])
    fake.post_message(world.general, world.alice, "just words")
    event = fake.wait_for(lambda f: [e for e in bot.events() if e.get("posted") == posted["id"]], 60, "image_posted")[0]
    assert [f["filename"] for f in event["files"]] == ["red.png", "green.png"]
    assert [f["sha256"] for f in event["files"]] == [hashlib.sha256(red).hexdigest(), hashlib.sha256(green).hexdigest()]
    assert event["space"] == world.guild and event["channel"] == world.private and event["author"] == world.mod["id"]
    assert event["permalink"].endswith(f"/{world.guild}/{world.private}/{posted['id']}")
    assert event["files"][0]["source_id"] == posted["attachments"][0]["id"] and event["text"] == "two pictures"

    second = fake.post_message(world.general, world.alice, "", files=[("b.png", _png((0, 0, 255)), "image/png")])
    third = fake.post_message(world.general, world.alice, "", files=[("c.png", _png((9, 9, 9)), "image/png")])
    fake.wait_for(lambda f: len([e for e in bot.events() if "posted" in e]) == 3, 60, "three image events")
    fake.delete_message(world.private, posted["id"])
    fake.bulk_delete(world.general, [second["id"], third["id"]])
    deleted = fake.wait_for(lambda f: [e for e in bot.events() if "deleted" in e] if
                            len([e for e in bot.events() if "deleted" in e]) == 3 else None, 30, "three deletions")
    assert {(e["deleted"], e["channel"]) for e in deleted} == {
        (posted["id"], world.private), (second["id"], world.general), (third["id"], world.general)}
    assert "not indexing broken.png" in bot.log()


def test_a_long_job_gets_a_thread_throttled_progress_edits_and_a_final_image_that_fits(world, start_bot):
    start_bot()
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.mod, "probe_long", {"steps": 8, "delay": 0.4, "big": 400})
    thread = fake.wait_for(lambda f: next((c for c in f.channels.values() if c.get("parent_id") == world.general),
                                          None), 30, "a thread")
    assert thread["type"] == 11 and thread["name"].startswith("/probe_long")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                     if m["content"].startswith("finished")], 60, "the final reply")[0]
    progress_posts = fake.find_calls("POST", rf"/channels/{thread['id']}/messages")
    edits = fake.find_calls("PATCH", rf"/channels/{thread['id']}/messages/\d+")
    assert len(progress_posts) == 1, "progress edits one message"
    assert edits and all(c.path.endswith(final["id"]) for c in edits)
    assert len(edits) < 8, "progress edits are throttled"
    assert not fake.rate_limited, "the bot caused 429s"
    assert not fake.find_calls("POST", rf"/webhooks/{fake.app_id}/{record.token}"), "thread replies use the bot token"
    (image,) = final["attachments"]
    assert len(noise_png(400)) > fake.attachment_size_limit >= image["size"]
    assert image["filename"] == "final.jpg"
    original = fake.messages[world.general][record.original_id]
    assert original["content"].startswith("Working on it")


def _pings(payload: dict) -> list[str]:
    """Who Discord would notify for a message payload: mentions in `content` that its
    `allowed_mentions` permit (Discord API docs, "Allowed Mentions": absent means all of them)."""
    allowed = payload.get("allowed_mentions")
    parse = set(allowed.get("parse", ())) if allowed is not None else {"everyone", "users", "roles"}
    content = payload.get("content") or ""
    found = re.findall(r"@(?:everyone|here)", content) if "everyone" in parse else []
    found += [m for m in re.findall(r"<@!?(\d+)>", content)
              if "users" in parse or m in (allowed or {}).get("users", ())]
    found += [m for m in re.findall(r"<@&(\d+)>", content)
              if "roles" in parse or m in (allowed or {}).get("roles", ())]
    return found


def test_echoed_labels_prompts_and_names_never_ping_and_stay_literal(world, start_bot):
    start_bot()
    fake = world.fake
    hostile = f"@everyone @here <@{world.alice['id']}> <@&{world.mods_role}> ||boo|| \u202eevil"
    whatis = fake.slash(world.guild, world.general, world.alice, "whatis", {"labels": "@everyone, @here, red"},
                        attachments={"image": ("red.png", _png(), "image/png")})
    assert "red" in _answer(fake, whatis, "the /whatis answer", until=whatis_answer)["content"]
    slow = _answer(fake, fake.slash(world.guild, world.general, world.alice, "probe_slow",
                                    {"steps": 2, "delay": 0.1, "text": hostile}), "the /probe_slow answer")
    fake.slash(world.guild, world.general, world.alice, "probe_long", {"steps": 2, "delay": 0.1, "big": 64,
                                                                          "text": hostile})
    thread = _thread_of(fake, world.general, "/probe_long")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                     if m["content"].startswith("finished")], 60, "the long job's answer")[0]
    sent = [c for c in fake.calls if isinstance(c.json, dict) and "content" in c.json]
    kinds = {(c.method, c.path.split("/")[1]) for c in sent}  # edits of the interaction's message,
    assert {("PATCH", "webhooks"), ("POST", "channels"), ("PATCH", "channels")} <= kinds, kinds  # thread posts
    for call in sent:
        assert call.json["allowed_mentions"] == {"parse": []}, (call.method, call.path, call.json)
        assert _pings(call.json) == [], call.json
        assert "@everyone" not in (call.json["content"] or "") and "\u202e" not in (call.json["content"] or "")
    for message in (slow, final):  # as the members see it: the text, literally, spoiler markers shown
        assert "\\|\\|boo\\|\\|" in message["content"] and "@\u200beveryone @\u200bhere" in message["content"]
    assert "\u202e" not in thread["name"] and thread["name"].startswith("/probe_long @")


def test_answers_move_to_channel_messages_when_the_interaction_token_expires(world, start_bot):
    start_bot(CLIPBOT_DISCORD_TOKEN_TTL="1.2")
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.mod, "probe_slow", {"steps": 3, "delay": 1.0})
    final = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                     if m["content"].startswith("finished")], 60, "the final reply")[0]
    assert "interaction_metadata" not in final, "after the token's lifetime the bot token posts"
    assert fake.find_calls("POST", rf"/channels/{world.general}/messages")
    assert not fake.rate_limited


def test_an_expired_token_answer_is_retried_with_the_bot_token(world, start_bot):
    start_bot()
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.mod, "probe_slow", {"steps": 2, "delay": 1.5})
    fake.wait_for(lambda f: f.messages[world.general].get(record.original_id or "", {}).get("content", "")
                  .startswith("step 1"), 30, "the first progress edit")
    fake.expire_token(record.token)
    final = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                     if m["content"].startswith("finished")], 60, "the final reply")[0]
    assert "interaction_metadata" not in final
    assert any(c.status == 401 for c in fake.find_calls("PATCH", rf"/webhooks/{fake.app_id}/{record.token}/.*"))


def test_without_the_message_content_intent_the_bot_says_so_and_still_answers(world, start_bot):
    world.fake.grant_message_content = False
    bot = start_bot()
    fake = world.fake
    assert "WITHOUT the Message Content intent" in bot.log()
    assert _probe_data(_answer(fake, fake.slash(world.guild, world.general, world.alice, "probe")))["n"] == 0


def _thread_of(fake: FakeDiscord, parent: str, prefix: str) -> dict:
    return fake.wait_for(lambda f: next((c for c in f.channels.values() if c.get("parent_id") == parent
                                         and c["name"].startswith(prefix)), None), 60, f"a thread {prefix}")


def _buttons(message: dict) -> dict[str, str]:
    return {c["label"]: c["custom_id"] for row in message["components"] for c in row["components"]}


def _imagined(world, channel: str, options: dict, button: str, what: str = "the picture") -> tuple[Any, dict, dict]:
    """Alice's /imagine with `options` in `channel`: the interaction, its thread, and the final
    message once it carries `button`."""
    fake = world.fake
    record = fake.slash(world.guild, channel, world.alice, "imagine", options)
    thread = _thread_of(fake, channel, f"/imagine {options['prompt']}")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values() if button in _buttons(m)],
                          180, what)[0]
    return record, thread, final


@pytest.mark.slow
@pytest.mark.timeout(900)  # two /imagine runs on a shared CPU
def test_imagine_runs_in_a_thread_with_progress_edits_a_final_image_and_working_buttons(world, start_bot):
    # No edit throttle here: a fast CPU runs 24 tiny steps inside one interval, and the throttle would then
    # (rightly) drop every snapshot; the fake's edit limit is raised to match. Throttling has its own test above.
    world.fake.edit_limit = (1000, 5.0)
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    fake = world.fake
    record = fake.slash(world.guild, world.general, world.mod, "imagine",
                        {"prompt": "a watercolor fox", "steps": 24, "size": "64", "every": 4, "seed": 5})
    thread = _thread_of(fake, world.general, "/imagine a watercolor fox")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                     if "Reroll" in _buttons(m)], 300, "the final picture")[0]
    assert record.callback_type == 5
    (image,) = final["attachments"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(image["url"]))) as im:
        assert im.size == (64, 64)
    assert {"Reroll", "Variations", "Continue", "Use as init"} <= set(_buttons(final))
    posts = fake.find_calls("POST", rf"/channels/{thread['id']}/messages")
    edits = fake.find_calls("PATCH", rf"/channels/{thread['id']}/messages/\d+")
    assert len(posts) == 1 and edits, "progress and the final picture edit one message in the thread"
    assert any(f["filename"].startswith("step-") for c in posts + edits for f in c.files), "snapshots are shown"
    assert any("Cancel" in str(c.json) for c in posts + edits), "progress carries a Cancel button"
    assert not fake.rate_limited

    # Anyone in the thread may reroll: a new picture from the clicker, in the same thread.
    click = fake.click(world.guild, thread["id"], world.alice, final["id"], _buttons(final)["Reroll"])
    fake.wait_for(lambda f: len([m for m in f.messages[thread["id"]].values() if "Reroll" in _buttons(m)]) == 2,
                  300, "the rerolled picture")
    assert click.callback_type == 5
    assert len([c for c in fake.channels.values() if c.get("parent_id") == world.general]) == 1, "no second thread"


def _search(fake: FakeDiscord, world, user: dict, query: str) -> dict:
    return _answer(fake, fake.slash(world.guild, world.general, user, "search", {"query": query}), f"/search {query}")


def _search_until(fake: FakeDiscord, world, user: dict, query: str, done, what: str) -> dict:
    """Indexing is asynchronous (batched on the engine): ask again until the answer shows it."""
    answers: list[dict] = []

    def shown() -> dict | None:
        answers.append(_search(fake, world, user, query))
        return answers[-1] if done(answers[-1]["content"]) else None

    return wait_until(shown, timeout=180, what=f"/search to show {what}", every=2,
                      detail=lambda: f"last answer: {answers[-1]['content'] if answers else None}")


def test_posted_images_are_searchable_only_by_members_who_can_read_their_channel(world, start_bot):
    start_bot()
    fake = world.fake
    secret = fake.post_message(world.private, world.mod, "the secret plan",
                               files=[("plan.png", _png((250, 10, 10)), "image/png")])
    public = fake.post_message(world.general, world.alice, "lunch",
                               files=[("lunch.png", _png((10, 250, 10)), "image/png")])

    both = _search_until(fake, world, world.mod, "picture in:all",
                         lambda text: secret["id"] in text and public["id"] in text, "both pictures to a mod")
    assert both["attachments"], "results come as a contact sheet"

    alice = _search(fake, world, world.alice, "picture in:all")
    assert public["id"] in alice["content"]
    assert secret["id"] not in alice["content"] and world.private not in alice["content"]
    (sheet,) = alice["attachments"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(sheet["url"]))) as im:
        assert im.width > 0
    for row in alice.get("components") or ():
        assert all(secret["id"] not in c.get("custom_id", "") for c in row["components"])

    record = fake.slash(world.guild, world.general, world.alice, "search", {"query": f"plan in:<#{world.private}>"})
    refusal = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                       if m.get("interaction_metadata", {}).get("id") == record.id
                                       and m["flags"] & EPHEMERAL], 60, "a refusal")
    assert "only search channels you can read" in refusal[0]["content"]


def test_a_deleted_message_leaves_the_index(world, start_bot):
    start_bot()
    fake = world.fake
    posted = fake.post_message(world.general, world.alice, "", files=[("gone.png", _png((1, 2, 250)), "image/png")])
    kept = fake.post_message(world.general, world.alice, "", files=[("kept.png", _png((250, 250, 1)), "image/png")])
    _search_until(fake, world, world.alice, "picture", lambda t: posted["id"] in t and kept["id"] in t, "both")
    fake.delete_message(world.general, posted["id"])
    _search_until(fake, world, world.alice, "picture", lambda t: posted["id"] not in t and kept["id"] in t,
                  "the deleted picture gone")


def test_search_collapses_reposts_names_files_marks_weak_matches_and_expands_by_button(world, start_bot):
    start_bot()
    fake = world.fake
    def post(name, color):
        return fake.post_message(world.general, world.alice, name, files=[(f"{name}.png", _png(color), "image/png")])

    posts = [post("lunch", (10, 250, 10)) for _ in range(2)]  # the same picture twice: one result, "+1 similar"
    other = post("plan", (250, 10, 10))
    _search_until(fake, world, world.alice, "picture", lambda t: other["id"] in t and "+1 similar" in t,
                  "the repost collapsed")
    answer = _search(fake, world, world.alice, "picture")  # everything indexed now
    text = answer["content"]
    assert "lunch.png · " in text and "plan.png · " in text and "(+1 similar)" in text  # file names, scores
    assert sum(p["id"] in text for p in posts) == 1
    buttons = _buttons(answer)
    assert "More" not in buttons and len(answer["attachments"]) == 1
    expand = next(custom_id for label, custom_id in buttons.items() if label.endswith("+1 similar"))
    click = fake.click(world.guild, world.general, world.alice, answer["id"], expand)
    copies = _answer(fake, click, "the near-duplicates")["content"]
    assert all(p["id"] in copies for p in posts) and other["id"] not in copies


def _first_result(answer: dict) -> str:
    return next((line for line in answer["content"].splitlines() if re.match(r"\W*1\.", line)), "")


def test_words_on_a_picture_and_in_its_message_find_it_through_discord(world, start_bot):
    """Real OCR in the indexing batch: a slide posted without text is found by a word written on it,
    a plain picture by its message's words (and by an exact `text:` phrase); each first result line
    shows those words."""
    start_bot()
    fake = world.fake
    slide = fake.post_message(world.general, world.alice, "", files=[
        ("slide.png", text_png(["Quarterly roadmap", "kiwi budget"]), "image/png")])
    plain = fake.post_message(world.general, world.alice, "design review notes",
                              files=[("IMG_1.png", _png((10, 10, 250)), "image/png")])

    def first_result_is(message: dict):
        return lambda text: message["id"] in _first_result({"content": text})

    found = _search_until(fake, world, world.alice, "kiwi", first_result_is(slide), "the slide by the word on it")
    assert "slide.png" in _first_result(found) and "_on it_: kiwi budget" in _first_result(found)  # the words read
    by_message = _search(fake, world, world.alice, "the design review whiteboard")
    assert plain["id"] in _first_result(by_message) and "“design review notes”" in _first_result(by_message)
    phrase = _search(fake, world, world.alice, 'whiteboard text:"design review"')
    assert plain["id"] in _first_result(phrase) and slide["id"] not in phrase["content"]


def test_index_backfill_walks_the_channel_history_page_by_page(world, start_bot):
    fake = world.fake
    old = [fake.post_message(world.general, world.alice, f"old {i}",
                             files=[(f"old{i}.png", _png((i * 60, 100, 100)), "image/png")] if i % 2 == 0 else [])
           for i in range(5)]  # posted while the bot was away: only the history has them
    start_bot(CLIPBOT_SEARCH_BACKFILL_PAGE="2", CLIPBOT_SEARCH_BACKFILL_DELAY="0")
    fake.slash(world.guild, world.general, world.mod, "index", {"action": "backfill"})
    thread = _thread_of(fake, world.general, "/index")
    done = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                    if m["content"].startswith("Backfill of")], 120, "the backfill's end")[0]
    assert "3 pictures" in done["content"]
    pages = fake.find_calls("GET", rf"/channels/{world.general}/messages")
    assert len(pages) >= 3 and pages[0].query.get("limit") == "2"
    found = _search(fake, world, world.alice, "picture")["content"]
    assert all(m["id"] in found for m in old[::2])


@pytest.mark.slow
def test_clipbot_index_backfill_from_the_shell_reads_discord_history(world, tmp_path):
    """`clipbot index backfill --platform discord` walks the history over REST alone (no bot
    running, no gateway), resumes from its cursor, and a bad channel or token is one clear line."""
    from tests.conftest import run_clipbot
    from tests.fakes.discord_fake import BOT_TOKEN

    fake = world.fake
    old = [fake.post_message(world.general, world.alice, f"old {i}",
                             files=[(f"old{i}.png", _png(HUES[i // 2]), "image/png")] if i % 2 == 0 else [])
           for i in range(7)]  # hues the tiny model tells apart (greys and near colours are near-duplicates)
    data = tmp_path / "data"
    env = {"DISCORD_TOKEN": BOT_TOKEN, "CLIPBOT_DISCORD_API_BASE": fake.api_base,
           "CLIPBOT_TEST_FILE_HOSTS": f"127.0.0.1:{fake.port}",
           "CLIPBOT_SEARCH_BACKFILL_PAGE": "2", "CLIPBOT_SEARCH_BACKFILL_DELAY": "0"}

    def clipbot(*args, **extra):
        return run_clipbot(data, *args, **{**env, **extra})

    where = ["--platform", "discord", "--space", world.guild, "--channel", world.general]
    out = clipbot("index", "backfill", *where, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"channel": world.general, "pages": 4, "messages": 4, "queued": 4}
    assert fake.identifies == []  # REST only: no gateway session was opened
    pages = fake.find_calls("GET", rf"/channels/{world.general}/messages")
    assert [p.query.get("limit") for p in pages] == ["2"] * 4
    found = json.loads(clipbot("search", *where, "--top", "10", "--json", "picture").stdout)["results"]
    assert {r["message_id"] for r in found} == {m["id"] for m in old[::2]}
    assert all(r["permalink"].endswith(f"/{world.guild}/{world.general}/{r['message_id']}") for r in found)

    newer = fake.post_message(world.general, world.alice, "new", files=[("new.png", _png((9, 9, 9)), "image/png")])
    again = clipbot("index", "backfill", *where, "--json")  # a finished backfill starts again from the newest
    assert json.loads(again.stdout)["queued"] == 5, again.stderr
    found = json.loads(clipbot("search", *where, "--top", "10", "--json", "picture").stdout)["results"]
    assert newer["id"] in {r["message_id"] for r in found} and len(found) == 5  # re-walked pictures index once

    bad = clipbot("index", "backfill", "--platform", "discord", "--space", world.guild, "--channel", "123")
    assert bad.returncode == 2 and "cannot see that channel" in bad.stderr and "Traceback" not in bad.stderr
    other = fake.add_guild("Elsewhere")
    foreign = fake.add_channel(other, "lobby")
    bad = clipbot("index", "backfill", "--platform", "discord", "--space", world.guild, "--channel", foreign)
    assert bad.returncode == 2 and "not in this server" in bad.stderr
    bad = clipbot("index", "backfill", *where, DISCORD_TOKEN="")
    assert bad.returncode == 2 and "set DISCORD_TOKEN" in bad.stderr
    bad = clipbot("index", "backfill", *where, DISCORD_TOKEN="not-a-token")
    assert bad.returncode == 2 and "rejected DISCORD_TOKEN" in bad.stderr, bad.stderr


def test_a_deleted_channel_or_one_the_bot_can_no_longer_read_is_removed(world, start_bot):
    bot = start_bot()
    fake = world.fake
    fake.post_message(world.general, world.alice, "", files=[("x.png", _png(), "image/png")])  # reaches the bot
    fake.wait_for(lambda f: any("posted" in e for e in bot.events()), 60, "the bot to be listening")
    fake.update_overwrites(world.general, [{"id": fake.app_id, "type": 1, "deny": VIEW_CHANNEL}])
    removed = fake.wait_for(lambda f: [e for e in bot.events() if "removed" in e], 30, "channel_removed")
    assert {k: removed[0][k] for k in ("removed", "space")} == {"removed": world.general, "space": world.guild}
    fake.delete_channel(world.private)
    fake.wait_for(lambda f: {e["removed"] for e in bot.events() if "removed" in e} == {world.general, world.private},
                  30, "the deleted channel removed")  # and no other channel


def _search_in(fake: FakeDiscord, world, channel: str, user: dict, query: str) -> str:
    return _answer(fake, fake.slash(world.guild, channel, user, "search", {"query": query}),
                   f"/search {query} in {channel}")["content"]


def test_a_private_threads_pictures_are_found_only_by_who_may_see_the_thread(world, start_bot):
    """The rule (README, /search): a private thread's pictures are found from inside the thread and by
    members with Manage Threads; a public thread's follow its parent; a deleted thread, or a private
    one the bot is removed from, leaves the index."""
    fake = world.fake
    threads_role = fake.add_role(world.guild, "thread mods", MANAGE_THREADS)  # before the bot caches the roles
    start_bot()
    bob, carol = fake.add_member(world.guild, "bob"), fake.add_member(world.guild, "carol")
    keeper = fake.add_member(world.guild, "keeper", roles=[threads_role])
    secret_thread = fake.add_thread(world.general, "surprise party", world.alice, private=True, members=[carol])
    open_thread = fake.add_thread(world.general, "lunch ideas", world.alice)
    secret = fake.post_message(secret_thread, world.alice, "", files=[("cake.png", _png((250, 10, 10)), "image/png")])
    shared = fake.post_message(open_thread, world.alice, "", files=[("soup.png", _png((10, 250, 10)), "image/png")])
    plain = fake.post_message(world.general, world.alice, "", files=[("desk.png", _png((10, 10, 250)), "image/png")])
    every = (secret["id"], shared["id"], plain["id"])

    # Manage Threads on the parent: every private thread there, from the parent and with in:all
    _search_until(fake, world, keeper, "picture", lambda t: all(m in t for m in every), "all three to Manage Threads")
    assert all(m in _search_in(fake, world, world.general, keeper, "picture in:all") for m in every)
    # not a member, no Manage Threads (Manage Server is not it): the public thread, not the private one
    for user in (bob, world.mod):
        for query in ("picture", "picture in:all"):
            text = _search_in(fake, world, world.general, user, query)
            assert shared["id"] in text and plain["id"] in text and secret["id"] not in text, (user, query, text)
    text = _search_in(fake, world, open_thread, bob, "picture")  # inside the public thread: the parent's scope
    assert shared["id"] in text and plain["id"] in text and secret["id"] not in text
    # a member of the private thread: found by searching inside it, not from the parent
    inside = _search_in(fake, world, secret_thread, carol, "picture")
    assert all(m in inside for m in every)
    assert all(m in _search_in(fake, world, secret_thread, world.alice, "picture in:all") for m in every)
    assert secret["id"] not in _search_in(fake, world, world.general, carol, "picture in:all")


def test_a_deleted_thread_or_a_private_one_the_bot_is_removed_from_leaves_the_index(world, start_bot):
    fake = world.fake
    keeper = fake.add_member(world.guild, "keeper", roles=[fake.add_role(world.guild, "thread mods", MANAGE_THREADS)])
    start_bot()
    secret_thread = fake.add_thread(world.general, "surprise party", world.alice, private=True)
    open_thread = fake.add_thread(world.general, "lunch ideas", world.alice)
    secret = fake.post_message(secret_thread, world.alice, "", files=[("cake.png", _png((250, 10, 10)), "image/png")])
    shared = fake.post_message(open_thread, world.alice, "", files=[("soup.png", _png((10, 250, 10)), "image/png")])
    plain = fake.post_message(world.general, world.alice, "", files=[("desk.png", _png((10, 10, 250)), "image/png")])
    _search_until(fake, world, keeper, "picture", lambda t: all(m["id"] in t for m in (secret, shared, plain)),
                  "all three to Manage Threads")

    # the bot removed from the private thread: its pictures leave the index (for everyone)
    fake.remove_thread_member(secret_thread, fake.app_id)
    _search_until(fake, world, keeper, "picture", lambda t: secret["id"] not in t and shared["id"] in t,
                  "the private thread's picture gone")
    # a deleted thread (Discord sends no MESSAGE_DELETE for its messages): its pictures go too
    fake.delete_thread(open_thread)
    _search_until(fake, world, keeper, "picture", lambda t: shared["id"] not in t and plain["id"] in t,
                  "the deleted thread's picture gone")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_imagine_pictures_that_match_a_concept_are_spoilered_except_in_age_restricted_channels_and_deletable(
        world, start_bot):
    """A concept with threshold -1 matches every picture (a cosine is never below -1): the real worker
    blurs it and the adapter spoilers it (SPOILER_ file names); an age-restricted channel allows it.
    The Delete button deletes the message for the requester, not for another member."""
    world.fake.edit_limit = (1000, 5.0)
    fake = world.fake
    adult = fake.add_channel(world.guild, "adult", nsfw=True)
    bob = fake.add_member(world.guild, "bob")
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0", CLIPBOT_SAFETY_CONCEPTS="anything=-1")
    options = {"steps": 2, "size": "32", "every": 2, "seed": 3, "drawer": "pixels"}

    _, thread, final = _imagined(world, world.general, {"prompt": "a red kite", **options}, "Delete",
                                 "the blurred picture")
    assert [a["filename"] for a in final["attachments"]] == ["SPOILER_final.png"]
    assert "Blurred" in final["content"] and "rule: anything" in final["content"]

    _, _, allowed = _imagined(world, adult, {"prompt": "a blue kite", **options}, "Delete",
                              "the picture in the adult channel")
    assert [a["filename"] for a in allowed["attachments"]] == ["final.png"] and "Blurred" not in allowed["content"]

    refused = fake.click(world.guild, thread["id"], bob, final["id"], _buttons(final)["Delete"])
    notice = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                      if m.get("interaction_metadata", {}).get("id") == refused.id
                                      and m["flags"] & EPHEMERAL], 30, "a private refusal")[0]
    assert "Only the person who asked" in notice["content"] and final["id"] in fake.messages[thread["id"]]
    fake.click(world.guild, thread["id"], world.alice, final["id"], _buttons(final)["Delete"])
    fake.wait_for(lambda f: final["id"] not in f.messages[thread["id"]], 30, "the picture deleted")
    assert fake.find_calls("DELETE", rf"/channels/{thread['id']}/messages/{final['id']}")


@pytest.mark.slow
def test_remix_opens_a_modal_whose_new_prompt_and_mode_build_on_the_picture_and_params_answer_privately(
        world, start_bot):
    """Remix answers the click with a modal (prompt, mode pre-filled "vary"); its submission runs the
    command with what was typed: here an upscale under a new prompt, in the same thread."""
    world.fake.edit_limit = (1000, 5.0)
    fake = world.fake
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    _, thread, final = _imagined(world, world.general, {"prompt": "a red kite", "steps": 2, "size": "32", "every": 2,
                                                        "seed": 3, "drawer": "pixels"}, "Remix")
    assert {"Upscale x2", "Zoom out 1.5x", "Pan left", "Params", "Delete"} <= set(_buttons(final))

    opened = fake.click(world.guild, thread["id"], world.mod, final["id"], _buttons(final)["Remix"])
    fake.wait_for(lambda f: opened.modal, 30, "the Remix modal")
    assert opened.callback_type == 9 and opened.modal["title"] == "Remix"
    inputs = {c["custom_id"]: c for row in opened.modal["components"] for c in row["components"]}
    assert set(inputs) == {"prompt", "mode"} and inputs["mode"]["value"] == "vary"
    assert "value" not in inputs["prompt"] and "empty: as before" in inputs["prompt"]["placeholder"]

    submitted = fake.submit_modal(world.guild, thread["id"], world.mod, opened,
                                  {"prompt": "a red kite at dawn", "mode": "upscale"})
    upscaled = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                        if "Remix" in _buttons(m) and "at dawn" in m["content"]], 180,
                             "the upscaled picture")[0]
    assert submitted.callback_type == 5 and "upscale of job" in upscaled["content"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(upscaled["attachments"][0]["url"]))) as im:
        assert im.size == (64, 64)

    params = fake.click(world.guild, thread["id"], world.alice, upscaled["id"], _buttons(upscaled)["Params"])
    private = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                       if m.get("interaction_metadata", {}).get("id") == params.id
                                       and "Params of job" in m["content"]], 30, "the Params answer")[0]
    assert private["flags"] & EPHEMERAL and "a red kite" in private["content"] and "upscale of" in private["content"]


@pytest.mark.slow
def test_the_timelapse_button_posts_a_gif_and_mp4_that_fit_the_interactions_upload_limit(world, start_bot):
    world.fake.edit_limit = (1000, 5.0)
    fake = world.fake
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    _, thread, final = _imagined(world, world.general, {"prompt": "a paper lantern", "steps": 8, "size": "64",
                                                        "every": 8, "seed": 3, "drawer": "pixels"}, "Timelapse")

    def timelapse(limit: int) -> dict:
        fake.attachment_size_limit = limit  # what the next interaction's payload says
        click = fake.click(world.guild, thread["id"], world.mod, final["id"], _buttons(final)["Timelapse"])
        return _answer(fake, click, "the timelapse", until=lambda m: bool(m["attachments"]))

    whole = timelapse(256 * 1024)
    sizes = {a["filename"]: a["size"] for a in whole["attachments"]}
    assert set(sizes) == {"timelapse.gif", "timelapse.mp4"} and "made smaller" not in whole["content"]
    limit = sizes["timelapse.gif"] // 2
    fitted = timelapse(limit)
    files = {a["filename"]: a for a in fitted["attachments"]}
    assert set(files) == {"timelapse.gif", "timelapse.mp4"}, "still a GIF: made to fit, not turned into a JPEG"
    assert files["timelapse.gif"]["size"] <= limit and files["timelapse.mp4"]["size"] <= limit
    assert "GIF made smaller to fit the" in fitted["content"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(files["timelapse.gif"]["url"]))) as im:
        assert im.format == "GIF" and im.n_frames > 1


@pytest.mark.slow
def test_settings_private_shows_imagine_progress_only_to_the_requester_and_the_picture_to_all(world, start_bot):
    world.fake.edit_limit = (1000, 5.0)
    fake = world.fake
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    asked = fake.slash(world.guild, world.general, world.alice, "settings", {"private": True})
    saved = fake.wait_for(lambda f: [m for m in f.messages[world.general].values()
                                     if m.get("interaction_metadata", {}).get("id") == asked.id
                                     and m["flags"] & EPHEMERAL], 30, "the settings, privately")[0]
    assert "private `True`" in saved["content"]
    record, thread, final = _imagined(world, world.general, {"prompt": "a quiet harbour", "steps": 4, "size": "32",
                                                             "every": 2, "drawer": "pixels"}, "Remix",
                                      "the public picture in its thread")
    assert not final["flags"] & EPHEMERAL and final["attachments"]
    followups = [c for c in fake.find_calls("POST", rf"/webhooks/{fake.app_id}/{record.token}")]
    assert followups and all(c.json["flags"] & EPHEMERAL for c in followups), "progress went privately"
    edits = fake.find_calls("PATCH", rf"/webhooks/{fake.app_id}/{record.token}/messages/\d+")
    assert any("step" in (c.json.get("content") or "") for c in edits), "edited in place"
    # the private progress went once the picture was there; nothing public showed the progress
    assert fake.find_calls("DELETE", rf"/webhooks/{fake.app_id}/{record.token}/messages/\d+")
    assert list(fake.messages[thread["id"]]) == [final["id"]]
    assert not [m for m in fake.channel_messages(world.general) if "step" in m["content"]]


def _refusal(fake: FakeDiscord, channel: str, record: InteractionRecord) -> str:
    return fake.wait_for(lambda f: [m for m in f.messages[channel].values()
                                    if m.get("interaction_metadata", {}).get("id") == record.id
                                    and m["flags"] & EPHEMERAL], 60, "an ephemeral refusal")[0]["content"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_blend_takes_attachment_options_and_message_links_only_of_channels_the_member_reads(world, start_bot):
    world.fake.edit_limit = (1000, 5.0)
    start_bot(CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    fake = world.fake
    lunch = fake.post_message(world.general, world.alice, "lunch", files=[("lunch.png", _png(HUES[1]), "image/png")])
    secret = fake.post_message(world.private, world.mod, "plan", files=[("plan.png", _png(HUES[2]), "image/png")])
    _search_until(fake, world, world.mod, "picture in:all", lambda text: lunch["id"] in text and secret["id"] in text,
                  "both pictures indexed")
    link = f"https://discord.com/channels/{world.guild}/{world.general}/{lunch['id']}"
    hidden = f"https://discord.com/channels/{world.guild}/{world.private}/{secret['id']}"
    pictures = {"images": ("red.png", _png(HUES[0]), "image/png"), "images2": ("blue.png", _png(HUES[2]), "image/png")}

    # a picture of a channel alice cannot read: refused privately, nothing queued, no thread
    record = fake.slash(world.guild, world.general, world.alice, "blend", {"links": hidden},
                        attachments={"images": pictures["images"]})
    assert "is in a channel you can't see" in _refusal(fake, world.general, record)
    one = fake.slash(world.guild, world.general, world.alice, "blend", attachments={"images": pictures["images"]})
    assert "/blend takes 2 to 5 pictures (got 1)" in _refusal(fake, world.general, one)
    assert not [c for c in fake.channels.values() if c.get("parent_id") == world.general]

    fake.slash(world.guild, world.general, world.alice, "blend",
               {"links": link, "prompt": "a mosaic", "weights": "1 0.5 2", "steps": 4, "size": "32", "every": 2},
               attachments=pictures)
    thread = _thread_of(fake, world.general, "/blend")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values()
                                     if "Reroll" in _buttons(m)], 300, "the blended picture")[0]
    assert "blending red.png (1), blue.png (0.5), " in final["content"] and lunch["id"] in final["content"]
    (image,) = final["attachments"]
    with PILImage.open(io.BytesIO(fake.cdn_bytes(image["url"]))) as im:
        assert im.size == (32, 32)
    # its Reroll is a pre-filled /imagine: the same three pictures and weights
    fake.click(world.guild, thread["id"], world.alice, final["id"], _buttons(final)["Reroll"])
    again = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values() if "Reroll" in _buttons(m)
                                     and m["id"] != final["id"]], 300, "the rerolled blend")[0]
    assert "blending red.png (1), blue.png (0.5), " in again["content"] and "reroll of job" in again["content"]
    # five attachment options (images ... images5): the most a blend takes, all attached
    five = {("images" + (str(i) if i > 1 else "")): (f"p{i}.png", _png(HUES[i % 4]), "image/png") for i in range(1, 6)}
    record = fake.slash(world.guild, world.general, world.alice, "blend", {"links": link}, attachments=five)
    assert "/blend takes 2 to 5 pictures (got 6)" in _refusal(fake, world.general, record)
