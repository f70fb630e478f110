"""Discord with the Redis engine and a real `clipbot worker`: a bot killed mid-/imagine, started again,
still delivers the picture into the job's thread."""

from __future__ import annotations

import signal

import pytest
import redis

from tests.e2e.test_discord_e2e import _buttons, _thread_of
from tests.support.polling import wait_until

LONG = "gpu-long"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_bot_killed_mid_imagine_delivers_the_picture_after_a_restart(world, start_bot, redis_engine,
                                                                       start_worker, redis_url):
    redis.Redis.from_url(redis_url).delete("clipbot:workers")
    worker = start_worker("--queues", LONG)
    worker.wait_ready(redis_engine.engine, queue=LONG)
    fake = world.fake
    fake.edit_limit = (1000, 5.0)  # every snapshot is edited in (no throttle): the wait below must not race it
    bot = start_bot(redis_url=redis_url, CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    try:
        _kill_and_restart(world, start_bot, bot, redis_url)
    finally:
        print(f"---- worker log ----\n{worker.log()}")  # shown when the test fails


def _kill_and_restart(world, start_bot, bot, redis_url) -> None:
    fake = world.fake
    client = redis.Redis.from_url(redis_url)
    earlier = set(client.scan_iter("clipbot:longjob:*"))  # other tests' bots, stopped mid-job, keep theirs
    fake.slash(world.guild, world.general, world.mod, "imagine",
               {"prompt": "a stone bridge", "steps": 60, "size": "64", "every": 10, "seed": 4})
    thread = _thread_of(fake, world.general, "/imagine a stone bridge")
    fake.wait_for(lambda f: any(m["attachments"] and m["attachments"][0]["filename"].startswith("step-")
                                for m in f.messages[thread["id"]].values()), 300, "a progress snapshot")
    bot.stop(signal.SIGKILL)  # the bot dies mid-job; the worker carries on

    again = start_bot(redis_url=redis_url, CLIPBOT_DISCORD_EDIT_INTERVAL="0")
    final = fake.wait_for(lambda f: [m for m in f.messages[thread["id"]].values() if "Reroll" in _buttons(m)],
                          600, "the picture, delivered by the restarted bot")[0]
    assert "seed `4` · 60 steps" in final["content"] and final["attachments"][0]["filename"] == "final.png"
    assert "following 1 unfinished job" in again.log()
    # the entry goes once the final reply is delivered, which is just after the fake shows it
    left = lambda: set(client.scan_iter("clipbot:longjob:*")) - earlier  # noqa: E731
    wait_until(lambda: not left(), timeout=30, what="the delivered job's entry to be forgotten",
               detail=lambda: str({k: client.get(k) for k in left()}))
