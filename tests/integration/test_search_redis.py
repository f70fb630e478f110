"""Indexing through the real Redis and a real `clipbot worker`: posted pictures wait in Redis and
one drain job embeds them in batches (a few model calls, not one per picture); queries and
deletions run on the worker too."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
import redis

from bot.commands import Attachment, Request
from bot.events import ImagePosted, MessageDeleted
from tests.conftest import make_settings, write_image
from tests.support.polling import wait_until


@pytest.fixture
def client(redis_url):
    client = redis.Redis.from_url(redis_url)
    client.delete("clipbot:workers", "clipbot:search:pending", "clipbot:search:drain")
    return client


def search(app, space, **options):
    request = Request(command="search", options=options, user_id="ana", channel_id="c1", platform="local",
                      space_id=space, readable_channels=frozenset({"c1"}), conversation={"channel": "c1"})

    async def collect():
        return [r async for r in app.handle(request)]

    return asyncio.run(collect())[-1]


def test_posted_pictures_are_embedded_in_batches_by_the_worker(redis_url, data_dir, start_worker, client, tmp_path):
    from bot.app import open_app

    space = f"team-{uuid.uuid4().hex[:6]}"
    paths = [write_image(tmp_path / f"p{i}.png", size=(40 + i, 40), color=(12 * i, 255 - 12 * i, 90))
             for i in range(21)]
    settings = make_settings(data_dir, broker_url=redis_url, queue_timeout=60, job_timeout=120)
    with open_app(settings, start_worker=False) as app:
        def post(i, message=None):
            data = paths[i].read_bytes()
            key = app.engine.blobs.put(data)
            event = ImagePosted("local", space, "c1", message or f"m{i}", "ana", time.time(), f"https://x/{i}",
                                (Attachment(key, paths[i].name, "image/png", len(data)),))
            asyncio.run(app.image_posted(event))

        for i in range(20):  # no worker yet: the pictures wait in Redis (the hook logs why)
            post(i)
        assert client.llen("clipbot:search:pending") == 20 and not client.exists("clipbot:search:drain")
        # 21 close colours are near-duplicates to the tiny model: this test counts them one by one
        worker = start_worker(CLIPBOT_SEARCH_BATCH_SIZE="8", CLIPBOT_SEARCH_DRAIN_BATCHES="10",
                              CLIPBOT_SEARCH_DUPLICATE_COSINE="1")
        worker.wait_ready(app.engine)
        post(20)  # the next post starts one drain job for all 21
        wait_until(lambda: not (client.llen("clipbot:search:pending") or client.exists("clipbot:search:drain")),
                   timeout=120, what="the pending pictures to be drained", detail=worker.log, every=0.2)

        drains = [json.loads(client.get(k)) for k in client.scan_iter("clipbot:job:*")]
        drains = [d for d in drains if d["task"] == "search.drain" and d["state"] == "succeeded"]
        assert sum(d["result"]["embedded"] for d in drains) == 21, worker.log()
        assert sum(d["result"]["batches"] for d in drains) == 3  # 8 + 8 + 5 pictures per model call

        post(3)  # the same event again: nothing new
        reply = search(app, space, image=None, similar="c1/m3", top=25)
        assert not reply.error, reply.text
        assert len(reply.data["results"]) == 20 and "m3" not in {r["message_id"] for r in reply.data["results"]}
        found = search(app, space, query="a square", top=25).data["results"]
        assert len(found) == 21 and len({r["message_id"] for r in found}) == 21

        asyncio.run(app.message_deleted(MessageDeleted("local", space, "c1", "m3")))
        wait_until(lambda: "m3" not in {r["message_id"] for r in search(app, space, query="a square", top=25).data["results"]},
                   timeout=60, what="m3 to leave the index", every=0.2)

        # a deletion while no worker is online is kept, and applied by the next job
        worker.stop()
        asyncio.run(app.message_deleted(MessageDeleted("local", space, "c1", "m7")))
        assert json.loads(client.get("clipbot:search:unapplied-removals")) == [
            {"space": space, "message_id": "m7", "channel_id": "c1", "source_ids": []}]
        start_worker(CLIPBOT_SEARCH_DUPLICATE_COSINE="1").wait_ready(app.engine)
        post(8, message="m8-again")
        wait_until(lambda: "m8-again" in {r["message_id"] for r in search(app, space, query="a square", top=25).data["results"]},
                   timeout=60, what="m8-again to be indexed", every=0.2)
        left = {r["message_id"] for r in search(app, space, query="a square", top=25).data["results"]}
        assert "m7" not in left and len(left) == 20 and not client.exists("clipbot:search:unapplied-removals")
