"""The engine's named pending queues on Redis keep the embedded ones' contract."""

from tests.unit.test_engine_pending import check_pending


def test_pending_on_redis_keeps_the_contract(redis_engine):
    check_pending(redis_engine.face, "t-pending-redis")


def test_pending_on_redis_is_shared_by_every_face_of_the_fleet(redis_engine):
    # a bot's face and a worker's face are different objects on the same Redis keys
    redis_engine.face.pending("t-shared").push([{"n": 1}])
    again = type(redis_engine.face)(redis_engine.engine)
    assert again.pending("t-shared").peek(5) == [{"n": 1}]
    again.pending("t-shared").ack(1)
    assert redis_engine.face.pending("t-shared").size() == 0
