"""Slack end to end: `clipbot run` as a subprocess, its real slack-bolt app talking to the fake
Slack on 127.0.0.1, in both modes (Socket Mode and HTTP with signed requests).

The commands come from real plugins (/whatis on the tiny random CLIP) and from a third-party-style
test plugin (tests/support/probe_plugin.py) that shows what the adapter put in a request and records
the index hooks it receives.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bot.actions import decode_action
from tests.conftest import ROOT, clipbot_env, run_clipbot
from tests.fakes.slack_fake import (FakeSlack, block_actions, event_callback, form_body, message_event,
                                    message_shortcut, signed_headers, slash_command, view_submission)
from tests.support.pictures import png_bytes, text_png
from tests.support.processes import LoggedProcess

TEAM = "T0FAKE"
SECRET = "fake-signing-secret"


def _png(color=(200, 30, 30), size=(48, 32)) -> bytes:
    return png_bytes(color, size)


class _SlackRun(LoggedProcess):
    """One `clipbot run` of a SlackBot; SIGTERM reaches the parent alone, as before."""

    name, log_tail, grace = "clipbot run", 5000, 30.0

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__([sys.executable, "-m", "bot.cli", "run"], log_path, env=env, whole_group=False)

    def stop(self, sig: int = signal.SIGTERM, kill_wait: float = 10) -> int:
        return super().stop(sig, kill_wait)


class SlackBot:
    """`clipbot run` serving the fake Slack in one mode."""

    def __init__(self, mode: str, fake: FakeSlack, data_dir: Path, log_path: Path, redis_url: str | None = None) -> None:
        self.mode, self.fake, self.data_dir, self.log_path = mode, fake, data_dir, log_path
        self.redis_url = redis_url
        self.events_path = data_dir / "probe-events.jsonl"
        self.url = ""
        self._process: _SlackRun | None = None

    def start(self) -> None:
        env = clipbot_env(self.data_dir, self.redis_url, SLACK_BOT_TOKEN=self.fake.bot_token,
                          CLIPBOT_SLACK_API_URL=self.fake.api_url, CLIPBOT_TEST_FILE_HOSTS=self.fake.file_host,
                          CLIPBOT_EXTRA_PLUGINS="tests.support.probe_plugin",
                          CLIPBOT_PROBE_EVENTS=str(self.events_path), CLIPBOT_SLACK_PROGRESS_INTERVAL="0",
                          CLIPBOT_SLACK_CHANNEL_INTERVAL="0.05", CLIPBOT_SLACK_ADMINS="UADMIN", OMP_NUM_THREADS="1")
        for name in ("SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
            env.pop(name, None)
        if self.mode == "socket":
            env["SLACK_APP_TOKEN"] = self.fake.app_token
        else:
            env.update(SLACK_SIGNING_SECRET=SECRET, CLIPBOT_SLACK_PORT="0", CLIPBOT_SLACK_HOST="127.0.0.1")
        connections = self.fake.socket_connections
        self._process = _SlackRun(env, self.log_path)
        if self.mode == "socket":
            self._wait(lambda: self.fake.socket_connections > connections and self.fake.socket_connected, "a socket")
        else:
            self.url = self._wait(self._listening_url, "the HTTP listener")

    def _listening_url(self) -> str | None:
        for line in self._process.run_log().splitlines()[::-1]:  # this run's lines only
            if "HTTP mode listening on " in line:
                return line.rsplit("listening on ", 1)[1].strip()
        return None

    def _wait(self, predicate, what: str, timeout: float = 120):
        return self._process.wait_ready(predicate, what=what, timeout=timeout)

    def stop(self) -> None:
        if self._process:
            self._process.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def probe_events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        return [json.loads(line) for line in self.events_path.read_text().splitlines() if line.strip()]

    # ---- what Slack sends ----------------------------------------------------------------------
    def send(self, kind: str, payload: dict, *, retry: int = 0) -> int:
        """Deliver like Slack does in this mode; returns the HTTP status (socket: 200 once acked)."""
        if self.mode == "socket":
            envelope = self.fake.socket_send(kind, payload, retry_attempt=retry)
            self.fake.wait_ack(envelope)
            return 200
        if kind == "slash_commands":
            body, content_type = urlencode(payload), "application/x-www-form-urlencoded"
        elif kind == "interactive":
            body, content_type = form_body(payload), "application/x-www-form-urlencoded"
        else:
            body, content_type = json.dumps(payload), "application/json"
        headers = signed_headers(SECRET, body, content_type=content_type, retry_num=retry or None)
        return self.post(body, headers)

    def post(self, body: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(self.url, data=body.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code


@pytest.fixture(scope="module")
def fake():
    fake = FakeSlack().start()
    fake.add_user("U1", ["C1", "C2", "C3"])
    fake.add_user("U2", ["C2"])
    fake.add_user("UADMIN", ["C1"])
    fake.add_user("UOWNER", ["C1", "C3"], admin=True)
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=["socket", "http"])
def bot(request, fake, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp(f"slack-{request.param}")
    bot = SlackBot(request.param, fake, data_dir, data_dir / "bot.log")
    bot.start()
    yield bot
    bot.stop()


@pytest.fixture(autouse=True)
def _fresh_calls(fake):
    fake.mark()  # each test looks only at what the bot did during it


def _posted(fake: FakeSlack, channel: str, needle: str, method: str = "chat.postMessage"):
    return fake.wait_call(method, lambda c: c.params.get("channel", c.params.get("channel_id")) == channel
                          and needle in (c.params.get("text") or c.params.get("initial_comment") or ""))


def _answered(fake: FakeSlack, channel: str, ts: str, button: str = "Reroll") -> dict:
    """A long job's parent message once the answer's buttons replaced the progress (and its Cancel)."""
    def done():
        parent = fake.thread(channel, ts)[0]
        labels = [e["text"]["text"] for b in parent.get("blocks") or () if b["type"] == "actions"
                  for e in b["elements"]]
        return parent if button in labels else None

    return fake.wait_for(done, what=f"the answer (with {button}) edited into the parent")


def _button(message: dict, label: str) -> dict:
    """The button labelled `label` in a message's actions blocks."""
    return next(e for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]
                if e["text"]["text"] == label)


def _imagine_answered(bot, fake: FakeSlack, channel: str, options: str, button: str) -> tuple[str, dict]:
    """U1's `/imagine options` in `channel`: its parent message's ts, and the parent once the
    answer's buttons (with `button`) replaced the progress."""
    bot.send("slash_commands", slash_command(TEAM, channel, "U1", "/imagine", options))
    prompt = options.split(" steps:")[0]
    fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith(f"<@U1> /imagine: {prompt}"))
    ts = [m["ts"] for m in fake.bot_messages(channel) if m["text"].startswith(f"<@U1> /imagine: {prompt}")][-1]
    return ts, _answered(fake, channel, ts, button=button)


def _token() -> str:
    return uuid.uuid4().hex[:8]


# ---- commands -------------------------------------------------------------------------------------
def test_slash_command_is_acked_then_answered_with_a_button(bot, fake):
    word = _token()
    assert bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/echo", word)) == 200
    call = _posted(fake, "C1", word)
    assert call.params["text"] == f"echo from U1: *{word}*"  # neutral markup rendered as mrkdwn
    button = call.params["blocks"][-1]["elements"][0]
    assert button["action_id"].startswith("clipbot:") and button["style"] == "primary"
    assert button["value"].startswith("cb1:")


def test_request_carries_team_channels_and_admin(bot, fake):
    bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/whoami"))
    data = json.loads(_posted(fake, "C2", '"user": "U2"').params["text"].split(" ", 1)[1])
    assert data == {"user": "U2", "space": TEAM, "channel": "C2", "thread": None, "admin": False,
                    "readable": ["C2"], "platform": "slack"}
    for user, admin in (("UADMIN", True), ("UOWNER", True), ("U1", False)):  # config list, users.info
        bot.send("slash_commands", slash_command(TEAM, "C1", user, "/whoami"))
        data = json.loads(_posted(fake, "C1", f'"user": "{user}"').params["text"].split(" ", 1)[1])
        assert data["admin"] is admin, user


def test_user_mistakes_answer_privately_in_one_line(bot, fake):
    bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/echo", ""))
    call = fake.wait_call("chat.postEphemeral", lambda c: "needs 'text'" in c.params.get("text", ""))
    assert call.params["user"] == "U1" and "\n" not in call.params["text"]


def test_whatis_message_shortcut_classifies_the_picture(bot, fake):
    # The channel's label set (set by an admin) keeps the tiny model off the 80k ImageNet prompts.
    bot.send("slash_commands", slash_command(TEAM, "C1", "UADMIN", "/labels", "set cat, dog, car"))
    _posted(fake, "C1", "Saved 3 labels")
    photo = fake.add_file(_png(), "cat.png", user="U1")
    message = fake.post_as_user("C1", "U1", "look", files=[photo])
    bot.send("interactive", message_shortcut(TEAM, "C1", "U1", message, "clipbot_whatis"))
    # The chart is uploaded, then the text posted with its Where? button, both under the message.
    fake.wait_call("files.completeUploadExternal", lambda c: c.params.get("thread_ts") == message["ts"], timeout=120)
    call = fake.wait_call("chat.postMessage", lambda c: c.params.get("thread_ts") == message["ts"])
    assert "tiny-test" in call.params["text"]  # the model is named in the answer
    assert "this channel's labels" in call.params["text"]
    assert (photo["id"], True) in fake.downloads  # fetched with the bot token


def test_describe_message_shortcut_answers_with_four_imagine_buttons(bot, fake):
    photo = fake.add_file(_png((40, 90, 200)), "pic.png", user="U1")
    message = fake.post_as_user("C1", "U1", "describe me", files=[photo])
    bot.send("interactive", message_shortcut(TEAM, "C1", "U1", message, "clipbot_describe"))
    call = fake.wait_call("chat.postMessage", lambda c: "Prompts for this picture" in c.params.get("text", "")
                          and c.params.get("thread_ts") == message["ts"], timeout=120)
    buttons = [e for b in call.params["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [b["text"]["text"] for b in buttons] == [f"Imagine this #{i}" for i in range(1, 5)]
    actions = [decode_action(b["value"]) for b in buttons]
    assert {a.command for a in actions} == {"imagine"} and len({a.options["prompt"] for a in actions}) == 4
    assert all(a.options["prompt"] in call.params["text"] for a in actions)
    assert (photo["id"], True) in fake.downloads  # fetched with the bot token


def test_whatis_slash_command_in_a_channel_uses_its_latest_picture(bot, fake):
    photo = fake.add_file(_png((90, 90, 250)), "sky.png", user="U2")
    fake.post_as_user("C2", "U2", "sky", files=[photo])
    fake.post_as_user("C2", "U2", "a later message without a picture")
    bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/whatis", "sky, sea &amp; sand top: 2"))
    call = _posted(fake, "C2", "your labels")  # the text with its Where? button, after the chart's upload
    assert call.params.get("thread_ts") is None  # answered in the channel
    # Slack's escaping read back on the way in, mrkdwn escaping applied on the way out (shown as "&").
    assert "1. sea &amp; sand" in call.params["text"] or "2. sea &amp; sand" in call.params["text"]
    assert (photo["id"], True) in fake.downloads


def test_where_button_uploads_heat_maps_under_the_answer(bot, fake):
    photo = fake.add_file(_png((200, 90, 20)), "fox.png", user="U2")
    fake.post_as_user("C2", "U2", "a fox", files=[photo])
    bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/whatis", "fox, dog, cat"))
    posted = _posted(fake, "C2", "your labels")
    button = _button(posted.params, "Where?")
    message = [m for m in fake.bot_messages("C2") if "your labels" in m["text"]][-1]
    bot.send("interactive", block_actions(TEAM, "C2", "U2", message, button["action_id"], button["value"]))
    fake.wait_call("files.completeUploadExternal", lambda c: c.params.get("thread_ts") == message["ts"],
                   timeout=120)  # under the clicked answer
    names = [f["name"] for m in fake.thread("C2", message["ts"])[1:] for f in m.get("files", ())]
    assert names == ["whatis.png", "whatis-where-1.png", "whatis-where-2.png", "whatis-where-3.png"]


def test_whatis_mention_in_a_thread_uses_the_threads_latest_picture(bot, fake):
    parent = fake.post_as_user("C1", "U1", "thread start")
    photo = fake.add_file(_png((10, 200, 10)), "leaf.png", user="U1")
    fake.post_as_user("C1", "U1", "a picture", files=[photo], thread_ts=parent["ts"])
    mention = fake.post_as_user("C1", "U1", "<@UBOT> whatis labels: leaf, car", thread_ts=parent["ts"])
    event = {**message_event("C1", mention), "type": "app_mention"}
    bot.send("events_api", event_callback(TEAM, event))
    fake.wait_call("chat.postMessage", lambda c: c.params.get("thread_ts") == parent["ts"]
                   and "your labels" in c.params.get("text", ""), timeout=120)
    assert (photo["id"], True) in fake.downloads


# ---- long jobs -------------------------------------------------------------------------------------
def test_long_running_command_works_in_a_thread(bot, fake):
    assert bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/slow", "steps: 3")) == 200
    # Acked first, worked on after: the ack came back while the job had not finished.
    assert not any("done after" in c.params["text"] for c in fake.calls_to("chat.update"))
    fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U2> /slow"))
    parent = [m for m in fake.bot_messages("C2") if m["text"].startswith("<@U2> /slow")][-1]
    fake.wait_for(lambda: "done after 3 steps" in fake.thread("C2", parent["ts"])[0]["text"], what="final edit")
    thread = fake.thread("C2", parent["ts"])
    names = [f["name"] for m in thread[1:] for f in m.get("files", ())]
    assert names[-1] == "final.png" and any(n.startswith("step-") for n in names)  # snapshots, then the result
    updates = [c for c in fake.calls_to("chat.update") if c.params["ts"] == parent["ts"]]
    assert any("step" in c.params["text"] for c in updates)  # progress edited into the parent
    assert thread[0]["blocks"][-1]["elements"][0]["text"]["text"] == "Again"  # buttons on the answer


# ---- buttons survive a restart ---------------------------------------------------------------------
@pytest.mark.slow
def test_button_click_after_restart_is_a_request_from_the_clicker(bot, fake):
    word = _token()
    bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/echo", word))
    posted = _posted(fake, "C1", word)
    message = next(m for m in fake.bot_messages("C1") if word in m["text"])
    button = posted.params["blocks"][-1]["elements"][0]
    bot.restart()
    bot.send("interactive", block_actions(TEAM, "C1", "UADMIN", message, button["action_id"], button["value"]))
    again = _posted(fake, "C1", f"{word}!")
    assert again.params["text"] == f"echo from UADMIN: *{word}!*"
    assert again.params["thread_ts"] == message["ts"]  # answered under the clicked message


# ---- indexing hooks ----------------------------------------------------------------------------------
def test_retried_event_indexes_once_and_deletions_reach_the_index(bot, fake):
    photo = fake.add_file(_png((0, 0, 255)), "blue.png", user="U1")
    message = fake.post_as_user("C2", "U1", "blue", files=[photo])
    event = event_callback(TEAM, message_event("C2", message))
    bot.send("events_api", event)
    fake.wait_for(lambda: any(e["message_id"] == message["ts"] for e in bot.probe_events()), what="the index event")
    bot.send("events_api", event, retry=1)  # Slack's retry of the same event id
    fake.wait_for(lambda: f"Slack event {event['event_id']} already handled" in bot.log(), what="the retry dropped")
    other = fake.post_as_user("C2", "U1", "later", files=[fake.add_file(_png(), "later.png", user="U1")])
    bot.send("events_api", event_callback(TEAM, message_event("C2", other)))
    fake.wait_for(lambda: any(e["message_id"] == other["ts"] for e in bot.probe_events()), what="second index event")
    posted = [e for e in bot.probe_events() if e["kind"] == "posted" and e["message_id"] == message["ts"]]
    assert len(posted) == 1
    (attachment,) = posted[0]["attachments"]
    assert posted[0]["space_id"] == TEAM and posted[0]["channel_id"] == "C2" and posted[0]["author_id"] == "U1"
    assert attachment["source_id"] == photo["id"] and attachment["content_type"] == "image/png"
    assert posted[0]["permalink"] == f"https://fake.slack.com/archives/C2/p{message['ts'].replace('.', '')}"

    fake.delete_message("C2", message["ts"])
    bot.send("events_api", event_callback(TEAM, {"type": "message", "subtype": "message_deleted", "channel": "C2",
                                                 "deleted_ts": message["ts"], "ts": fake.next_ts(),
                                                 "previous_message": message}))
    bot.send("events_api", event_callback(TEAM, {"type": "file_deleted", "file_id": photo["id"],
                                                 "event_ts": fake.next_ts()}))
    fake.wait_for(lambda: len([e for e in bot.probe_events() if e["kind"] == "deleted"]) >= 2, what="2 deletions")
    deleted = [e for e in bot.probe_events() if e["kind"] == "deleted"][-2:]
    by_kind = {bool(e["source_ids"]): e for e in deleted}
    assert by_kind[False]["message_id"] == message["ts"] and by_kind[False]["channel_id"] == "C2"
    assert by_kind[True]["source_ids"] == [photo["id"]]
    # Slack's file_deleted names only the file; the adapter remembered where it was posted.
    assert (by_kind[True]["channel_id"], by_kind[True]["message_id"]) == ("C2", message["ts"])


def test_pictures_only_reach_the_index_with_the_bot_token(bot, fake):
    # A file link on another host must never get the bot token (it would leak it).
    evil = {"id": "FEVIL", "name": "x.png", "mimetype": "image/png", "url_private": "http://203.0.113.9/x.png"}
    message = fake.post_as_user("C1", "U1", "evil")
    message["files"] = [evil]
    bot.send("events_api", event_callback(TEAM, message_event("C1", message)))
    marker = fake.post_as_user("C1", "U1", "marker", files=[fake.add_file(_png(), "m.png", user="U1")])
    bot.send("events_api", event_callback(TEAM, message_event("C1", marker)))
    fake.wait_for(lambda: any(e["message_id"] == marker["ts"] for e in bot.probe_events()), what="marker indexed")
    assert not any(e["message_id"] == message["ts"] for e in bot.probe_events())
    assert "not on Slack" in bot.log()


def test_real_photos_are_classified_and_indexed_whole_and_a_lying_file_is_refused(bot, fake):
    from tests.fakes.cdn import lying_file, photo_jpeg

    bot.send("slash_commands", slash_command(TEAM, "C1", "UADMIN", "/labels", "set cat, dog, car"))
    _posted(fake, "C1", "Saved 3 labels")
    first, second = photo_jpeg(1), photo_jpeg(2)  # 4032x3024, ~5 MB, served in small pieces
    photo = fake.add_file(first, "IMG_0001.jpg", "image/jpeg", user="U1")
    message = fake.post_as_user("C1", "U1", "holiday", files=[photo])
    bot.send("interactive", message_shortcut(TEAM, "C1", "U1", message, "clipbot_whatis"))
    call = fake.wait_call("chat.postMessage", lambda c: c.params.get("thread_ts") == message["ts"], timeout=120)
    assert "this channel's labels" in call.params["text"], call.params["text"]  # posted with its Where? button

    indexed = fake.post_as_user("C2", "U1", "", files=[fake.add_file(second, "IMG_0002.jpg", "image/jpeg", user="U1")])
    bot.send("events_api", event_callback(TEAM, message_event("C2", indexed)))
    event = fake.wait_for(lambda: next((e for e in bot.probe_events() if e["message_id"] == indexed["ts"]), None),
                          timeout=120, what="the photo indexed")
    assert [a["size"] for a in event["attachments"]] == [len(second)]

    huge = fake.add_file(lying_file(first[:100_000]), "small.jpg", "image/jpeg", user="U1")  # says 1,000 bytes
    liar = fake.post_as_user("C1", "U1", "", files=[huge])
    bot.send("interactive", message_shortcut(TEAM, "C1", "U1", liar, "clipbot_whatis"))
    refusal = fake.wait_call("chat.postEphemeral", lambda c: "too big" in c.params.get("text", ""), timeout=120)
    assert refusal.params["text"].endswith("That file is too big (the limit is 25 MB).")
    assert refusal.params["user"] == "U1"
    bot.send("events_api", event_callback(TEAM, message_event("C1", liar)))
    fake.wait_for(lambda: f"not indexing file {huge['id']}" in bot.log(), timeout=120, what="the refusal logged")
    assert not any(e["message_id"] == liar["ts"] for e in bot.probe_events())


# ---- signatures (HTTP mode) ----------------------------------------------------------------------------
def test_forged_or_replayed_requests_get_401_and_never_run(bot, fake):
    if bot.mode != "http":
        pytest.skip("Socket Mode has no request signatures")
    forged, stale, valid = _token(), _token(), _token()
    body = urlencode(slash_command(TEAM, "C1", "U1", "/echo", forged))
    headers = signed_headers("not-the-secret", body, content_type="application/x-www-form-urlencoded")
    assert bot.post(body, headers) == 401
    assert bot.post(body, {"Content-Type": "application/x-www-form-urlencoded"}) == 401  # unsigned
    body = urlencode(slash_command(TEAM, "C1", "U1", "/echo", stale))
    old = signed_headers(SECRET, body, timestamp=int(time.time()) - 6 * 60,
                         content_type="application/x-www-form-urlencoded")
    assert bot.post(body, old) == 401  # a captured request replayed after the 5-minute window
    assert bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/echo", valid)) == 200
    _posted(fake, "C1", valid)
    texts = [c.params.get("text", "") for m in ("chat.postMessage", "chat.postEphemeral", "chat.update")
             for c in fake.calls_to(m)]
    assert not any(forged in t or stale in t for t in texts)


def test_malformed_request_timestamps_get_401_and_log_one_line_at_most(bot, fake):
    if bot.mode != "http":
        pytest.skip("Socket Mode has no request headers")
    start = len(bot.log_path.read_text(errors="replace").splitlines())
    body = urlencode(slash_command(TEAM, "C1", "U1", "/echo", _token()))
    for timestamp in ("not-a-number", "", "1e9", "12.5", "9" * 5000):
        headers = {**signed_headers(SECRET, body, content_type="application/x-www-form-urlencoded"),
                   "X-Slack-Request-Timestamp": timestamp}
        assert bot.post(body, headers) == 401, timestamp
    valid = _token()  # answered after the refusals: their log lines, if any, are written by now
    assert bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/echo", valid)) == 200
    _posted(fake, "C1", valid)
    lines = bot.log_path.read_text(errors="replace").splitlines()[start:]
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert len([line for line in lines if "Timestamp" in line or "Error" in line or "rror" in line]) <= 1, \
        "\n".join(lines)


def _deliver_twice(bot, kind: str, payload: dict) -> None:
    """A request and its replay: in HTTP mode the same signed bytes again; in Socket Mode the same
    payload in a second envelope (as Slack redelivers)."""
    if bot.mode == "socket":
        bot.send(kind, payload)
        bot.send(kind, payload)
        return
    body = urlencode(payload) if kind == "slash_commands" else form_body(payload)
    headers = signed_headers(SECRET, body, content_type="application/x-www-form-urlencoded")
    assert bot.post(body, headers) == 200
    assert bot.post(body, headers) == 200  # acked, so Slack would not retry it: but not run


def _replay_refused(bot, fake, payload: dict) -> None:
    fake.wait_for(lambda: f"{payload['trigger_id']} replayed: not run again" in bot.log(), what="the replay refused")


def test_replayed_commands_shortcuts_and_clicks_run_once(bot, fake):
    word = _token()
    command = slash_command(TEAM, "C1", "U1", "/echo", word)
    _deliver_twice(bot, "slash_commands", command)
    posted = _posted(fake, "C1", word)
    _replay_refused(bot, fake, command)

    message = next(m for m in fake.bot_messages("C1") if word in m["text"])
    button = posted.params["blocks"][-1]["elements"][0]
    click = block_actions(TEAM, "C1", "U1", message, button["action_id"], button["value"])
    _deliver_twice(bot, "interactive", click)
    _posted(fake, "C1", f"{word}!")
    _replay_refused(bot, fake, click)

    plain = fake.post_as_user("C1", "U1", f"no picture {word}")
    shortcut = message_shortcut(TEAM, "C1", "U1", plain, "clipbot_whatis")
    _deliver_twice(bot, "interactive", shortcut)
    fake.wait_call("chat.postEphemeral", lambda c: "no picture for /whatis" in c.params.get("text", ""))
    _replay_refused(bot, fake, shortcut)

    texts = [c.params.get("text", "") for c in fake.calls_to("chat.postMessage")]
    assert len([t for t in texts if t.endswith(f"*{word}*")]) == 1
    assert len([t for t in texts if t.endswith(f"*{word}!*")]) == 1
    assert len([c for c in fake.calls_to("chat.postEphemeral") if "no picture" in c.params.get("text", "")]) == 1


def test_a_replay_sent_to_another_bot_process_is_refused(fake, redis_url, tmp_path):
    """Two bot processes behind one URL share the engine's Redis: the one that did not see the
    original still knows the replay."""
    bots = [SlackBot("http", fake, tmp_path / f"bot{i}", tmp_path / f"bot{i}.log", redis_url=redis_url)
            for i in range(2)]
    try:
        for bot in bots:
            bot.data_dir.mkdir()
            bot.start()
        word = _token()
        command = slash_command(TEAM, "C2", "U2", "/echo", word)
        body = urlencode(command)
        headers = signed_headers(SECRET, body, content_type="application/x-www-form-urlencoded")
        assert bots[0].post(body, headers) == 200
        _posted(fake, "C2", word)
        assert bots[1].post(body, headers) == 200
        _replay_refused(bots[1], fake, command)
        assert len([c for c in fake.calls_to("chat.postMessage") if word in c.params.get("text", "")]) == 1
    finally:
        for bot in bots:
            bot.stop()


# ---- /search and /imagine through Slack --------------------------------------------------------------
def _search(bot, fake, user: str, channel: str, query: str) -> str:
    """Run /clip-search (Slack keeps /search for itself); the answer's text, links included."""
    fake.mark()
    bot.send("slash_commands", slash_command(TEAM, channel, user, "/clip-search", query))
    call = fake.wait_for(lambda: next((c for m in ("chat.postMessage", "chat.postEphemeral")
                                       for c in fake.calls_to(m) if c.params.get("channel") == channel), None),
                         timeout=120, what=f"the answer to /clip-search {query}")
    return call.params["text"]


def _post_picture(bot, fake, channel: str, user: str, color) -> dict:
    photo = fake.add_file(_png(color), f"{_token()}.png", user=user)
    message = fake.post_as_user(channel, user, "a picture", files=[photo])
    bot.send("events_api", event_callback(TEAM, message_event(channel, message)))
    return message


def _link(channel: str, message: dict) -> str:
    return f"https://fake.slack.com/archives/{channel}/p{message['ts'].replace('.', '')}"


def test_search_shows_only_channels_the_user_is_in_and_forgets_deleted_files(bot, fake):
    secret = _post_picture(bot, fake, "C1", "U1", (250, 0, 0))  # U2 is not in C1
    shared = _post_picture(bot, fake, "C2", "U1", (0, 250, 0))
    fake.wait_for(lambda: _link("C1", secret) in _search(bot, fake, "U1", "C1", "square in:all")
                  and _link("C2", shared) in _search(bot, fake, "U1", "C1", "square in:all"),
                  timeout=180, what="both pictures indexed")
    seen_by_u2 = _search(bot, fake, "U2", "C2", "square in:all")
    assert _link("C2", shared) in seen_by_u2 and "C1" not in seen_by_u2
    refused = _search(bot, fake, "U2", "C2", "square in:<#C1|c1>")
    assert "only search channels you can read" in refused and "/archives/C1" not in refused
    fake.mark()
    assert _link("C2", shared) in _search(bot, fake, "U2", "C2", "square")  # default scope: this channel
    assert fake.calls_to("files.completeUploadExternal")  # the contact sheet went up with the links

    fake.mark()  # "Find similar pictures" on the message: the picture itself comes first
    bot.send("interactive", message_shortcut(TEAM, "C2", "U2", shared, "clipbot_search"))
    similar = fake.wait_call("chat.postMessage", lambda c: c.params.get("thread_ts") == shared["ts"], timeout=120)
    assert _link("C2", shared) in similar.params["text"] and "/archives/C1" not in similar.params["text"]

    file_id = fake.thread("C2", shared["ts"])[0]["files"][0]["id"]
    bot.send("events_api", event_callback(TEAM, {"type": "file_deleted", "file_id": file_id,
                                                 "event_ts": fake.next_ts()}))
    fake.wait_for(lambda: _link("C2", shared) not in _search(bot, fake, "U1", "C2", "square in:all"),
                  timeout=120, what="the deleted file to leave the index")


@pytest.mark.slow
def test_blend_takes_a_mentions_files_and_permalinks_only_of_channels_the_user_is_in(bot, fake):
    secret = _post_picture(bot, fake, "C1", "U1", (250, 0, 250))  # U2 is not in C1
    shared = _post_picture(bot, fake, "C2", "U1", (0, 250, 250))
    fake.wait_for(lambda: _link("C1", secret) in _search(bot, fake, "U1", "C1", "square in:all")
                  and _link("C2", shared) in _search(bot, fake, "U1", "C1", "square in:all"),
                  timeout=180, what="both pictures indexed")
    fake.mark()
    bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/blend",
                                             f"links: <{_link('C2', shared)}> <{_link('C1', secret)}>"))
    refusal = fake.wait_call("chat.postEphemeral", lambda c: "can't see" in c.params.get("text", ""), timeout=120)
    assert refusal.params["user"] == "U2" and _link("C1", secret) in refusal.params["text"]
    assert not [m for m in fake.bot_messages("C2") if m["text"].startswith("<@U2> /blend")]  # nothing queued

    fake.mark()
    photos = [fake.add_file(_png(c), f"{name}.png", user="U1") for name, c in (("red", (250, 0, 0)),
                                                                                ("blue", (0, 0, 250)))]
    mention = fake.post_as_user("C1", "U1", f"<@UBOT> blend links: <{_link('C2', shared)}> prompt: a mosaic "
                                            "weights: 1 0.5 2 steps: 4 size: 32 every: 2", files=photos)
    bot.send("events_api", event_callback(TEAM, {**message_event("C1", mention), "type": "app_mention"}))
    fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U1> /blend"), timeout=120)
    parent = [m for m in fake.bot_messages("C1") if m["text"].startswith("<@U1> /blend")][-1]
    answer = _answered(fake, "C1", parent["ts"])
    assert "blending red.png (1), blue.png (0.5)" in answer["text"] and "(2)" in answer["text"], answer["text"]
    assert {(p["id"], True) for p in photos} <= set(fake.downloads)


def test_words_on_a_picture_and_in_its_message_find_it_through_slack(bot, fake):
    """Real OCR in the indexing batch: the slide is found by a word written on it, the plain picture
    by its message's words (and an exact `text:` phrase, typed as Slack sends it)."""
    slide = fake.add_file(text_png(["Quarterly roadmap", "kiwi budget"]), "slide.png", user="U1")
    slide_message = fake.post_as_user("C3", "U1", "", files=[slide])
    plain = fake.add_file(_png((0, 0, 250)), "IMG_1.png", user="U1")
    plain_message = fake.post_as_user("C3", "U1", "design review notes", files=[plain])
    for message in (slide_message, plain_message):
        bot.send("events_api", event_callback(TEAM, message_event("C3", message)))

    def first_line(query):
        lines = _search(bot, fake, "U1", "C3", query).splitlines()
        return next((line for line in lines if line.startswith("1. ")), "")

    line = fake.wait_for(lambda: (lambda l: l if _link("C3", slide_message) in l else None)(first_line("kiwi")),
                         timeout=180, what="the slide found by the word on it")
    assert "kiwi budget" in line  # the words that matched, shown in the result
    line = first_line('whiteboard text:"design review"')
    assert _link("C3", plain_message) in line and "design review notes" in line


def test_pictures_in_private_channels_group_dms_and_dms_are_found_only_by_their_members(bot, fake):
    """The rule (README, /search): a picture in a private channel, a group DM or a DM is found only by
    that conversation's members, with in:all too."""
    for user, channels in (("UPA", ["CPUB"]), ("UPB", ["CPUB"]), ("UPC", ["CPUB"]), ("UPD", ["CPUB"])):
        fake.add_user(user, channels)
    fake.add_conversation("GPRIV", "private_channel", ["UPA", "UPB"])
    fake.add_conversation("GMPIM", "mpim", ["UPA", "UPC"])
    fake.add_conversation("DPA", "im", ["UPA"])  # UPA's DM with the bot
    posted = {}
    for channel, kind, color in (("GPRIV", "group", (250, 0, 0)), ("GMPIM", "mpim", (0, 250, 0)),
                                 ("DPA", "im", (0, 0, 250))):
        photo = fake.add_file(_png(color), f"{_token()}.png", user="UPA")
        message = fake.post_as_user(channel, "UPA", "a picture", files=[photo])
        bot.send("events_api", event_callback(TEAM, message_event(channel, message, channel_type=kind)))
        posted[channel] = _link(channel, message)
    fake.wait_for(lambda: all(link in _search(bot, fake, "UPA", "CPUB", "square in:all") for link in posted.values()),
                  timeout=180, what="the poster, a member of all three, to find them")
    for user, sees in (("UPB", {"GPRIV"}), ("UPC", {"GMPIM"}), ("UPD", set())):
        text = _search(bot, fake, user, "CPUB", "square in:all")
        assert {c for c, link in posted.items() if link in text} == sees, (user, text)
        assert not any(f"/archives/{c}/" in text for c in posted if c not in sees), (user, text)
    refused = _search(bot, fake, "UPD", "CPUB", "square in:<#GPRIV|secret>")
    assert "only search channels you can read" in refused and "/archives/GPRIV" not in refused


def test_imagine_works_in_a_thread_with_snapshots_and_the_final_picture(bot, fake):
    assert bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/imagine",
                                                    "a red fox steps: 12 size: 64 every: 4 seed: 3")) == 200
    fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U1> /imagine"))
    parent = [m for m in fake.bot_messages("C1") if m["text"].startswith("<@U1> /imagine")][-1]
    fake.wait_for(lambda: any(f["name"] == "final.png" for m in fake.thread("C1", parent["ts"])[1:]
                              for f in m.get("files", ())), timeout=240, what="the final picture in the thread")
    _answered(fake, "C1", parent["ts"])
    thread = fake.thread("C1", parent["ts"])
    names = [f["name"] for m in thread[1:] for f in m.get("files", ())]
    assert any(n.startswith("step-") for n in names) and names[-1] == "final.png"
    assert all(m.get("thread_ts") == parent["ts"] for m in thread[1:])  # nothing spilled into the channel
    assert any(c.params["ts"] == parent["ts"] for c in fake.calls_to("chat.update"))  # progress edits
    labels = [e["text"]["text"] for e in thread[0]["blocks"][-1]["elements"]]
    assert "Reroll" in labels


def test_the_delete_button_deletes_the_result_and_its_thread_for_the_requester_only(bot, fake):
    word = _token()
    ts, parent = _imagine_answered(bot, fake, "C2", f"a {word} kite steps: 2 size: 32 every: 2",
                                   "Delete")
    uploaded = [f for m in fake.thread("C2", ts)[1:] for f in m.get("files", ())]
    assert any(f["name"] == "final.png" for f in uploaded)
    button = _button(parent, "Delete")
    bot.send("interactive", block_actions(TEAM, "C2", "U2", parent, button["action_id"], button["value"]))
    refusal = fake.wait_call("chat.postEphemeral", lambda c: "Only the person who asked" in c.params.get("text", ""))
    assert refusal.params["user"] == "U2" and fake.thread("C2", ts)
    bot.send("interactive", block_actions(TEAM, "C2", "U1", parent, button["action_id"], button["value"]))
    fake.wait_for(lambda: not [m for m in fake.messages["C2"] if ts in (m["ts"], m.get("thread_ts"))],
                  what="the parent and its thread deleted")
    assert any(c.params["ts"] == ts for c in fake.calls_to("chat.delete"))
    # the pictures themselves are gone too (a Slack file outlives its message): no permalink opens them
    assert {c.params["file"] for c in fake.calls_to("files.delete")} >= {f["id"] for f in uploaded}
    assert not {f["id"] for f in uploaded} & set(fake.files)


def test_imagine_timelapse_uploads_a_gif_and_mp4_to_the_thread_and_its_button_makes_them_again(bot, fake):
    word = _token()
    ts, parent = _imagine_answered(bot, fake, "C2", f"a {word} lantern steps: 4 size: 32 every: 2 timelapse: yes",
                                   "Timelapse")
    names = [f["name"] for m in fake.thread("C2", ts)[1:] for f in m.get("files", ())]
    assert names[-3:] == ["final.png", "timelapse.gif", "timelapse.mp4"]
    assert "Timelapse" in parent["text"] and "made smaller" not in parent["text"]  # 1 GB: nothing to shrink
    button = _button(parent, "Timelapse")
    bot.send("interactive", block_actions(TEAM, "C2", "U2", parent, button["action_id"], button["value"]))
    fake.wait_for(lambda: [f["name"] for m in fake.thread("C2", ts) for f in m.get("files", ())].count("timelapse.mp4")
                  == 2, what="the timelapse posted again in the thread for the click")


def test_remix_opens_a_modal_and_its_submission_builds_on_the_picture_with_the_new_prompt(bot, fake):
    word = _token()
    ts, parent = _imagine_answered(bot, fake, "C3", f"a {word} kite steps: 2 size: 32 every: 2 drawer: pixels",
                                   "Remix")
    button = _button(parent, "Remix")
    opened = len(fake.views)
    bot.send("interactive", block_actions(TEAM, "C3", "U1", parent, button["action_id"], button["value"]))
    view = fake.wait_for(lambda: fake.views[opened:] and fake.views[-1], what="the Remix modal")
    assert view["title"]["text"] == "Remix" and [b["block_id"] for b in view["blocks"]] == ["prompt", "mode"]
    prompt, mode = (b["element"] for b in view["blocks"])
    assert prompt["type"] == "plain_text_input" and "initial_value" not in prompt
    assert mode["type"] == "static_select" and mode["initial_option"]["value"] == "vary"
    assert {"upscale", "zoom-out", "pan-left"} <= {o["value"] for o in mode["options"]}

    bot.send("interactive", view_submission(TEAM, "U1", view, {"prompt": f"a {word} kite at dawn", "mode": "zoom-out"}))
    zoomed = fake.wait_for(lambda: [m for m in fake.bot_messages("C3") if "zoom-out of job" in m.get("text", "")
                                    and f"{word} kite at dawn" in m.get("text", "")], timeout=180,
                           what="the zoomed-out picture")[0]
    assert "48x48" in zoomed["text"]


def test_a_blurred_picture_says_so_on_slack_which_has_no_spoilers():
    from bot.adapters.slack.post import SPOILER_NOTE, _rendered
    from bot.commands import Image, Reply

    assert _rendered(Reply(text="a fox", images=(Image(b"png", spoiler=True),))) == f"a fox\n{SPOILER_NOTE}"
    assert _rendered(Reply(text="a fox", images=(Image(b"png"),))) == "a fox"


def test_imagine_header_shows_the_prompt_without_mentioning_anyone(bot, fake):
    prompt = "<!channel> hi <@U123> <!here> <#C2> \u202eevil\x07 &"
    bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/imagine", f"{prompt} steps: 2 size: 64 every: 1"))
    parent = fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U1> /imagine"))
    header = ("<@U1> /imagine: &lt;!channel&gt; hi &lt;@U123&gt; &lt;!here&gt; &lt;#C2&gt; evil &amp; "
              "steps: 2 size: 64 every: 1")
    assert parent.params["text"].split("\n")[0] == header  # the requester alone is mentioned, on purpose
    ts = [m["ts"] for m in fake.bot_messages("C1") if m["text"].startswith(header)][-1]  # this mode's
    fake.wait_for(lambda: any(f["name"] == "final.png" for m in fake.thread("C1", ts)[1:] for f in m.get("files", ())),
                  timeout=240, what="the final picture")
    final = _answered(fake, "C1", ts)
    edits = [c.params for c in fake.calls_to("chat.update") if c.params["ts"] == ts]
    assert edits
    texts = [p["text"] for p in edits] + [b["text"]["text"] for p in edits for b in p.get("blocks") or ()
                                          if b["type"] == "section"] + [final["text"]]
    for text in texts:  # progress and answer edits carry the header (and the prompt) escaped too
        assert "<!" not in text and "<@U123>" not in text and "<#" not in text and "\u202e" not in text, text


def test_imagine_progress_edits_carry_the_cancel_button(bot, fake):
    bot.send("slash_commands", slash_command(TEAM, "C2", "U2", "/imagine", "a calm lake steps: 3 size: 64 every: 1"))
    parent = fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U2> /imagine: a calm lake"))
    ts = [m["ts"] for m in fake.bot_messages("C2") if m["text"].startswith("<@U2> /imagine: a calm lake")][-1]
    fake.wait_for(lambda: any(f["name"] == "final.png" for m in fake.thread("C2", ts)[1:] for f in m.get("files", ())),
                  timeout=240, what="the final picture")
    final = _answered(fake, "C2", ts)
    edits = [c.params for c in fake.calls_to("chat.update") if c.params["ts"] == ts]
    progress = [e for e in edits if "%" in e["text"]]  # the progress line: `▓▓░░…` 40%
    assert progress, edits
    for edit in progress:  # while the job runs, the parent shows a Cancel button for it
        buttons = [b for block in edit["blocks"] if block["type"] == "actions" for b in block["elements"]]
        assert [b["text"]["text"] for b in buttons] == ["Cancel"], edit
        assert decode_action(buttons[0]["value"]).command == "cancel" and buttons[0]["style"] == "danger"
    assert "Cancel" not in [e["text"]["text"] for e in final["blocks"][-1]["elements"]]  # the answer's own
    assert parent.params["channel"] == "C2"


def test_a_refused_admin_command_is_answered_privately(bot, fake):
    bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/index", "backfill"))
    refusal = fake.wait_call("chat.postEphemeral", lambda c: "Only admins" in c.params.get("text", ""))
    assert refusal.params["user"] == "U1" and refusal.params["channel"] == "C1"
    assert "/index backfill" in refusal.params["text"]
    public = [c.params.get("text", "") for m in ("chat.postMessage", "chat.update") for c in fake.calls_to(m)]
    assert not any("/index" in t or "Only admins" in t for t in public), public  # nothing in the channel


def test_index_backfill_reads_history_patiently(bot, fake):
    channel = f"C3{bot.mode.upper()}"  # a channel of its own per mode: history from before the bot
    fake.add_user("UOWNER", ["C1", "C3", channel], admin=True)
    old = []
    for color in ((10, 10, 10), (250, 10, 10), (10, 250, 10)):  # not two greys: near-duplicates collapse
        photo = fake.add_file(_png(color), f"{_token()}.png", user="UOWNER")
        old.append(fake.post_as_user(channel, "UOWNER", "from before", files=[photo]))
        fake.post_as_user(channel, "UOWNER", "chatter")
    fake.rate_limit("conversations.history", times=1, retry_after=1)  # Slack says: slow down
    bot.send("slash_commands", slash_command(TEAM, channel, "UOWNER", "/index", "backfill"))
    parent = fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@UOWNER> /index"))
    assert parent.params["channel"] == channel
    fake.wait_for(lambda: all(_link(channel, m) in _search(bot, fake, "UOWNER", channel, "square top: 5")
                              for m in old), timeout=180, what="backfilled pictures in search")
    history = [c for c in list(fake.calls) if c.method == "conversations.history" and c.params.get("channel") == channel]
    assert len(history) >= 2  # the rate-limited call was waited out and made again


@pytest.mark.slow
def test_clipbot_index_backfill_from_the_shell_reads_slack_history(fake, tmp_path):
    """`clipbot index backfill --platform slack` reads conversations.history over the Web API alone
    (no bot running), waits out a rate limit, and the pictures are then searchable from the shell."""
    channel = "C9SHELL"
    fake.add_user("USHELL", [channel])
    old = []
    for color in ((250, 10, 10), (10, 250, 10), (10, 10, 250)):
        photo = fake.add_file(_png(color), f"{_token()}.png", user="USHELL")
        old.append(fake.post_as_user(channel, "USHELL", "from before", files=[photo]))
        fake.post_as_user(channel, "USHELL", "chatter")
    env = {"SLACK_BOT_TOKEN": fake.bot_token, "CLIPBOT_SLACK_API_URL": fake.api_url,
           "CLIPBOT_TEST_FILE_HOSTS": fake.file_host,
           "SLACK_APP_TOKEN": "", "SLACK_SIGNING_SECRET": "",  # the shell needs neither
           "CLIPBOT_SEARCH_BACKFILL_PAGE": "2", "CLIPBOT_SEARCH_BACKFILL_DELAY": "0"}

    def clipbot(*args, **extra):
        return run_clipbot(tmp_path / "data", *args, **{**env, **extra})

    where = ["--platform", "slack", "--space", TEAM, "--channel", channel]
    fake.rate_limit("conversations.history", times=1, retry_after=1)
    out = clipbot("index", "backfill", *where, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"channel": channel, "pages": 3, "messages": 3, "queued": 3}
    history = [c for c in fake.calls_to("conversations.history") if c.params.get("channel") == channel]
    assert len(history) == 4  # three pages, one of them asked twice after the 429
    found = json.loads(clipbot("search", *where, "--top", "10", "--json", "square").stdout)["results"]
    assert {r["permalink"] for r in found} == {_link(channel, m) for m in old}

    bad = clipbot("index", "backfill", "--platform", "slack", "--space", TEAM, "--channel", "CNOWHERE")
    assert bad.returncode == 2 and "invite me to it" in bad.stderr and "Traceback" not in bad.stderr
    bad = clipbot("index", "backfill", *where, SLACK_BOT_TOKEN="")
    assert bad.returncode == 2 and "set SLACK_BOT_TOKEN" in bad.stderr
    bad = clipbot("index", "backfill", *where, SLACK_BOT_TOKEN="xoxb-wrong")
    assert bad.returncode == 2 and "refused SLACK_BOT_TOKEN" in bad.stderr, bad.stderr


@pytest.mark.slow
def test_a_restarted_bot_finishes_a_long_job_in_the_same_thread(fake, redis_engine, redis_url, data_dir, start_worker):
    worker = start_worker("--queues", "gpu-long,gpu,io", "--pool", "solo")
    worker.wait_ready(redis_engine.engine, "gpu-long")
    bot = SlackBot("socket", fake, data_dir, data_dir / "slack-bot.log", redis_url=redis_url)
    bot.start()
    try:
        bot.send("slash_commands", slash_command(TEAM, "C1", "U1", "/imagine",
                                                 "a slow fox steps: 400 size: 64 every: 50 seed: 1"))
        fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U1> /imagine: a slow fox"))
        parent = [m for m in fake.bot_messages("C1") if m["text"].startswith("<@U1> /imagine: a slow fox")][-1]
        fake.wait_for(lambda: any(c.params["ts"] == parent["ts"] and "%" in c.params["text"]
                                  for c in fake.calls_to("chat.update")), timeout=180, what="progress")
        # mid-run (400 tiny steps outlast the old process's 5 s grace to finish answers and the new
        # one's start): the job goes on in the worker; the new bot follows it again
        bot.restart()
        restarted = time.time()
        fake.wait_for(lambda: any(f["name"] == "final.png" for m in fake.thread("C1", parent["ts"])[1:]
                                  for f in m.get("files", ())), timeout=300, what="the final picture")
        final = _answered(fake, "C1", parent["ts"])
        assert "Reroll" in [e["text"]["text"] for e in final["blocks"][-1]["elements"]]
        assert any(c.at > restarted and c.params.get("thread_ts") == parent["ts"]  # posted by the new process
                   for c in fake.calls_to("files.completeUploadExternal"))
    finally:
        bot.stop()
        worker.stop()
def test_an_unreachable_slack_stops_clipbot_run_with_one_line_naming_the_host(tmp_path):
    from tests.fakes.cdn import unreachable_port

    with unreachable_port() as port:
        env = clipbot_env(tmp_path, None, SLACK_BOT_TOKEN="xoxb-any", SLACK_APP_TOKEN="xapp-any",
                          CLIPBOT_SLACK_API_URL=f"http://127.0.0.1:{port}/api/", OMP_NUM_THREADS="1")
        out = subprocess.run([sys.executable, "-m", "bot.cli", "run"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("clipbot:")]
    assert lines == [f"clipbot: I could not reach Slack at 127.0.0.1:{port} (Connection refused); check the "
                     "network and the address, then try again."], out.stderr[-2000:]


def test_operator_mistakes_stop_clipbot_run_with_one_clear_line(fake, tmp_path):
    cases = [({"SLACK_BOT_TOKEN": fake.bot_token}, "needs SLACK_SIGNING_SECRET"),
             ({"SLACK_BOT_TOKEN": "xoxb-revoked", "SLACK_APP_TOKEN": fake.app_token}, "refused SLACK_BOT_TOKEN")]
    for env, message in cases:
        full = clipbot_env(tmp_path, None, CLIPBOT_SLACK_API_URL=fake.api_url, OMP_NUM_THREADS="1", **env)
        for name in ("SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET"):
            if name not in env:
                full.pop(name, None)
        out = subprocess.run([sys.executable, "-m", "bot.cli", "run"], cwd=ROOT, env=full, capture_output=True,
                             text=True, timeout=180, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = [line for line in out.stderr.splitlines() if line.startswith("clipbot:")]
        assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
