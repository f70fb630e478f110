"""The compose fleet, run as processes: deploy/compose.yml's services started from their own
commands and environment (tests/deploy/fleet.py maps host names, ports and volumes), on the test's
Redis and a real PostgreSQL, the bot in Slack HTTP mode against the fake Slack, the models pull
first, every healthcheck passing, then a /whatis, a posted picture found by /search and an
/imagine, end to end."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.deploy.conftest import BASE_DOTENV, COMPOSE, declared_queues, plan
from tests.deploy.fleet import Fleet, check_fleet, load_compose
from tests.fakes.slack_fake import FakeSlack, event_callback, message_event, signed_headers, slash_command
from tests.support.pictures import png_bytes

TEAM, SECRET = "T0FLEET", "fleet-signing-secret"


def _flower_skip() -> dict[str, str]:
    import importlib.util

    if importlib.util.find_spec("flower") is None:
        return {"flower": "flower is not installed (pip install -e '.[flower]')"}
    return {}


def _seed_labels(settings, volume: Path) -> None:
    """The tiny model's ImageNet label matrix (conftest's imagenet_labels_cached) into the data
    volume, so the models pull's prepare step finds it instead of encoding 80,000 prompts."""
    from plugins.whatis import tasks

    target = volume / "cache" / "labels"
    target.mkdir(parents=True, exist_ok=True)
    for path in tasks.label_cache_dir(settings).glob("*.pt"):
        shutil.copy(path, target / path.name)


class _Slack:
    """What Slack sends to the bot's published HTTP port, signed."""

    def __init__(self, fake: FakeSlack, port: int) -> None:
        self.fake, self.url = fake, f"http://127.0.0.1:{port}/slack/events"

    def send(self, kind: str, payload: dict) -> int:
        body = urlencode(payload) if kind == "slash_commands" else json.dumps(payload)
        content = "application/x-www-form-urlencoded" if kind == "slash_commands" else "application/json"
        request = urllib.request.Request(self.url, data=body.encode(), method="POST",
                                         headers=signed_headers(SECRET, body, content_type=content))
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def post_picture(self, channel: str, user: str, color) -> dict:
        photo = self.fake.add_file(png_bytes(color, (48, 32)), f"{uuid.uuid4().hex[:8]}.png", user=user)
        return self.fake.post_as_user(channel, user, "a picture", files=[photo])


@pytest.fixture
def fake(slack_fake):
    return slack_fake


@pytest.fixture
def fleet(fake, redis_url, postgres_url, settings, imagenet_labels_cached, tmp_path):
    dotenv = {**BASE_DOTENV, "SLACK_BOT_TOKEN": fake.bot_token, "SLACK_SIGNING_SECRET": SECRET,
              "CLIPBOT_SLACK_API_URL": fake.api_url, "CLIPBOT_TEST_FILE_HOSTS": fake.file_host,
              "CLIPBOT_SLACK_PROGRESS_INTERVAL": "0", "CLIPBOT_SLACK_CHANNEL_INTERVAL": "0.05"}
    plans, volumes = plan(load_compose(COMPOSE), tmp_path, dotenv, redis=redis_url, postgres=postgres_url)
    check_fleet(plans, declared_queues(), volumes)
    plans["postgres"].env["PGHOST"] = parse_qs(urlsplit(postgres_url).query)["host"][0]  # the test's server
    _seed_labels(settings, volumes / "clipbot-data")
    fleet = Fleet(plans, tmp_path, skip=_flower_skip())
    try:
        fleet.up()
        for name, service in plans.items():
            if name not in fleet.skip and not service.one_shot:  # a one-shot's check is its exit status
                fleet.wait_healthy(name)
        yield fleet
    except BaseException:
        print(fleet.logs())
        raise
    finally:
        fleet.down()


@pytest.mark.slow
def test_the_compose_fleet_answers_whatis_search_and_imagine(fleet, fake):
    started = {"bot", "worker-quick", "worker-long", "flower"} - set(fleet.skip)
    assert set(fleet.processes) == started and all(fleet.healthy(name) for name in started)
    slack = _Slack(fake, fleet.plans["bot"].ports[3000])
    picture = slack.post_picture("C1", "U1", (250, 20, 20))
    assert slack.send("events_api", event_callback(TEAM, message_event("C1", picture))) == 200

    assert slack.send("slash_commands", slash_command(TEAM, "C1", "U1", "/whatis", "cat, dog, car")) == 200
    # the chart is uploaded, then the text posted with its Where? button
    answer = fake.wait_call("chat.postMessage", lambda c: "your labels" in (c.params.get("text") or ""), timeout=120)
    assert "tiny-test" in answer.params["text"]

    link = f"https://fake.slack.com/archives/C1/p{picture['ts'].replace('.', '')}"

    def found() -> bool:
        fake.mark()
        slack.send("slash_commands", slash_command(TEAM, "C1", "U1", "/clip-search", "a red square"))
        reply = fake.wait_for(lambda: next((c for m in ("chat.postMessage", "chat.postEphemeral")
                                            for c in fake.calls_to(m) if c.params.get("channel") == "C1"), None),
                              timeout=60, what="the answer to /clip-search")
        return link in reply.params["text"]

    fake.wait_for(found, timeout=120, what="the posted picture found by /search (PostgreSQL index)")

    slack.send("slash_commands", slash_command(TEAM, "C1", "U1", "/imagine", "a red fox steps: 4 size: 64 every: 2"))
    parent = fake.wait_call("chat.postMessage", lambda c: c.params["text"].startswith("<@U1> /imagine"))
    ts = [m["ts"] for m in fake.bot_messages("C1") if m["text"].startswith("<@U1> /imagine")][-1]
    fake.wait_for(lambda: any(f["name"] == "final.png" for m in fake.thread("C1", ts)[1:] for f in m.get("files", ())),
                  timeout=240, what="the final picture of /imagine")
    assert parent.params["channel"] == "C1"
    ran = {name: fleet.processes[name].run_log() for name in ("worker-quick", "worker-long")}
    assert "Task imagine.generate[" in ran["worker-long"] and "Task imagine.generate[" not in ran["worker-quick"]
    assert "Task whatis.classify[" in ran["worker-quick"] and "Task whatis.classify[" not in ran["worker-long"]
