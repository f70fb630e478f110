"""Long jobs (bot.longjob) on the Redis engine, real Redis."""

from __future__ import annotations

import asyncio
import time

from bot import longjob
from bot.app import open_app
from tests.conftest import make_settings
from tests.support.polling import wait_until


def test_a_bot_back_after_its_jobs_record_expired_says_what_happened(redis_url, start_worker, tmp_path):
    """Issue 13, defect 10: this blamed "the embedded engine keeps jobs in memory" on the Redis engine."""
    settings = make_settings(tmp_path, broker_url=redis_url, job_ttl=1,
                             extra_plugins="tests.sample_plugin")
    with open_app(settings) as app:
        assert not app.engine.embedded
        start_worker("--pool", "solo", CLIPBOT_EXTRA_PLUGINS="tests.sample_plugin",
                     CLIPBOT_JOB_TTL="1").wait_ready(app.engine)
        job_id = app.engine.submit("sample.steps", {"n": 3})
        # the long-job entry the bot wrote as it was asked (bot.longjob.submit)
        app.engine.store.set(longjob._ENTRY + job_id, {
            "job_id": job_id, "task": "sample.steps", "queue": "gpu", "label": "/imagine a fox",
            "finish": "", "platform": "late-test", "conversation": {"channel": "c1"}, "user_id": "ann",
            "channel_id": "c1", "space_id": "s", "created": time.time()}, ttl=longjob.ENTRY_TTL)

        async def run_out():
            async for _event in app.engine.follow(job_id):
                pass

        asyncio.run(run_out())  # it ended while the bot was away ...
        wait_until(lambda: app.engine.book.get(job_id) is None, timeout=30,
                   what="the ended job's record to expire")  # ... and was forgotten

        async def resumed():
            return [(conversation, [r async for r in replies])
                    async for conversation, replies in app.resume_jobs("late-test")]

        ((conversation, replies),) = asyncio.run(resumed())
    assert conversation == {"channel": "c1"}
    (reply,) = replies
    assert reply.error and reply.final
    assert "embedded engine" not in reply.text
    assert "it ended while clipbot was away, and its result is gone" in reply.text, reply.text
    assert longjob.entry(app, job_id) is None  # said once
