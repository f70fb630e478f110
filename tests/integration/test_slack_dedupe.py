"""Slack event dedupe on both stores: a retried or duplicated event id runs once, also across restarts."""

from __future__ import annotations

import asyncio

import pytest

from bot.adapters.slack.files import EventDedupe
from tests.conftest import make_settings


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_event_dedupe_claims_once_and_survives_a_restart(backend, tmp_path, request):
    overrides = {"broker_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    settings = make_settings(tmp_path, **overrides)

    async def claims():
        first = EventDedupe(settings)
        results = [await first.claim("Ev1"), await first.claim("Ev1"), await first.claim("Ev2")]
        await first.close()
        again = EventDedupe(settings)  # a restarted bot still knows Ev1
        results.append(await again.claim("Ev1"))
        await again.close()
        return results

    assert asyncio.run(claims()) == [True, False, True, False]
