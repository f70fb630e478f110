"""Driving the local chat adapter from a test: one line in, its replies out."""

from __future__ import annotations

import asyncio


def say(adapter, line):
    return asyncio.run(adapter.handle_line(line))


def final_of(replies):
    final = replies[-1]
    assert final.final and not final.error, final.text
    return final
