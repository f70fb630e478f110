"""Handlers share the event loop with the platform connection (a Discord gateway heartbeat),
so store reads/writes and Pillow work must run off it. Checked by thread identity, not timing."""

import asyncio
import threading

from bot.commands import Attachment, Request
from tests.conftest import write_image


class _ThreadRecordingStore:
    """Wraps the engine's store and records which thread made each call."""

    def __init__(self, inner):
        self.inner = inner
        self.threads = []

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            self.threads.append(threading.get_ident())
            return method(*args, **kwargs)

        return call


def test_whatis_burst_keeps_store_and_pillow_off_the_loop(embedded, tmp_path, monkeypatch):
    import plugins.whatis as whatis

    store = _ThreadRecordingStore(embedded.engine.store)
    monkeypatch.setattr(embedded.engine, "store", store)
    chart_threads = []
    real_chart = whatis.render_chart

    def chart(*args, **kwargs):
        chart_threads.append(threading.get_ident())
        return real_chart(*args, **kwargs)

    monkeypatch.setattr(whatis, "render_chart", chart)
    data = write_image(tmp_path / "b.png").read_bytes()
    from plugins.whatis.labels import DEFAULT_SET, LabelSets

    for i in range(0, 6, 2):  # even channels answer from their saved set: a store read per request
        LabelSets(store.inner, "local", f"loop-{i}").save(DEFAULT_SET, ["sun", "moon", "star"])

    async def burst():
        loop_thread = threading.get_ident()
        requests = [
            Request(command="whatis", channel_id=f"loop-{i}", options={
                "image": Attachment(embedded.engine.blobs.put(data), "b.png", "image/png", len(data)),
                "labels": "cat, dog" if i % 2 else ""})
            for i in range(6)
        ] + [Request(command="labels", channel_id="loop-1", options={"action": "show"})]

        async def answer(request):
            return [reply async for reply in embedded.handle(request)]

        answers = await asyncio.gather(*(answer(r) for r in requests))
        return loop_thread, answers

    loop_thread, answers = asyncio.run(burst())
    assert all(a[-1].final and not a[-1].error for a in answers), [a[-1].text for a in answers]
    assert len(chart_threads) == 6 and loop_thread not in chart_threads
    assert store.threads and loop_thread not in store.threads
