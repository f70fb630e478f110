"""The engine's named pending queues (`engine.pending`), reached as plugins reach them: through
the engine face. Embedded (memory) here; the same contract on Redis:
tests/integration/test_pending_redis.py."""

import pytest

from engine.app import create_engine
from engine.face import EngineFace
from tests.conftest import make_settings


def check_pending(face: EngineFace, name: str) -> None:
    """The contract every pending queue keeps, whatever holds it."""
    queue = face.pending(name)
    assert queue.size() == 0
    assert queue.push([{"n": 1}, {"n": 2}]) is True  # first producer takes the lease: it submits the drain
    assert face.pending(name).push([{"n": 3}]) is False  # the lease is held: nobody else submits
    assert queue.size() == 3
    assert queue.peek(2) == [{"n": 1}, {"n": 2}]  # oldest first, left in place
    assert queue.peek(2) == [{"n": 1}, {"n": 2}]  # a drain that died before ack leaves them
    queue.ack(2)
    assert queue.peek(10) == [{"n": 3}]
    assert queue.release() is True  # items left: the releasing drain takes the lease again
    queue.ack(1)
    assert queue.release() is False and queue.size() == 0
    assert queue.push([]) is True  # free again: the next producer takes it
    queue.abandon()  # its drain could not be submitted
    assert queue.push([{"n": 4}]) is True


def test_pending_embedded_keeps_the_contract(tmp_path):
    check_pending(EngineFace(create_engine(make_settings(tmp_path))), "t-pending")


def test_pending_queues_are_per_name_and_per_engine(tmp_path):
    first = EngineFace(create_engine(make_settings(tmp_path / "a")))
    second = EngineFace(create_engine(make_settings(tmp_path / "b")))
    first.pending("one").push([{"x": 1}])
    assert first.pending("one").size() == 1
    assert first.pending("two").size() == 0
    assert second.pending("one").size() == 0  # embedded engines share nothing


def test_pending_items_are_json_copies(tmp_path):
    queue = EngineFace(create_engine(make_settings(tmp_path))).pending("t-copy")
    item = {"ids": [1]}
    queue.push([item])
    item["ids"].append(2)  # the producer keeps its object; the queue holds what crossed as JSON
    assert queue.peek(1) == [{"ids": [1]}]
    with pytest.raises(TypeError):
        queue.push([{"not": object()}])

