"""Safety on the distributed engine: the checks run in a real `clipbot worker` process (its own
CLIP model, its own settings from the environment), the policy and the audit log live in Redis.
A concept with threshold -1 matches every picture (cosines are >= -1), so the test needs no
particular picture."""

from __future__ import annotations

import asyncio
import io

from bot.adapters.local import LocalAdapter
from bot.app import open_app
from tests.conftest import make_settings

RUN = "/imagine a quiet lighthouse steps: 3 size: 32 every: 1 seed: 3 drawer: pixels"
EVERYTHING = {"CLIPBOT_SAFETY_CONCEPTS": "everything=-1"}


def test_a_worker_blurs_or_stops_matching_pictures_and_the_audit_log_says_so(data_dir, redis_url, start_worker,
                                                                              tmp_path):
    worker = start_worker("--queues", "gpu-long", **EVERYTHING)
    settings = make_settings(data_dir, broker_url=redis_url, queue_timeout=120, job_timeout=300)
    with open_app(settings, start_worker=False) as app:
        worker.wait_ready(app.engine, "gpu-long")
        user = LocalAdapter(app, out=io.StringIO(), output_dir=tmp_path, user_id="ann", is_admin=False,
                            channel_id="redis-safety")
        admin = LocalAdapter(app, out=io.StringIO(), output_dir=tmp_path, user_id="root", is_admin=True,
                             channel_id="redis-safety")
        say = lambda who, line: asyncio.run(who.handle_line(line))  # noqa: E731

        replies = say(user, RUN)
        final = replies[-1]
        assert not final.error, f"{final.text}\n{worker.log()}"
        assert final.data["flagged"] == "everything" and final.images[0].spoiler
        snapshots = [i for r in replies[:-1] for i in r.images]
        assert snapshots and all(i.spoiler for i in snapshots)  # every snapshot was checked in the worker

        assert say(admin, "/safety policy: stop")[-1].data["policy"] == "stop"
        stopped = say(user, RUN)[-1]
        assert stopped.error and "That picture is not allowed here (rule: everything)" in stopped.text

        entries = say(admin, "/audit last: 5")[-1].data["entries"]
        assert [e["action"] for e in entries[:3]] == ["stopped", "policy", "blurred"]
        assert entries[0]["user"] == "ann" and entries[0]["channel"] == "redis-safety" and entries[0]["job_id"]
        assert entries[1]["by"] == "root"
