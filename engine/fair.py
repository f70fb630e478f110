"""Fair queueing between users inside one broker queue.

Celery's Redis queue is first in, first out: a user who queues ten /imagine jobs delays everyone
after them by ten jobs. For a fair queue (`CLIPBOT_FAIR_QUEUES`, default `gpu-long`) the engine
keeps the waiting jobs itself, in a Redis sorted set, and hands the broker only what workers are
about to take (`CLIPBOT_FAIR_AHEAD` messages, default 1).

The order is start-time fair queueing with unit cost: a job's tag is `max(V, tag of the owner's
previous job + 1)`, where V is the tag of the job handed out last; the lowest tag goes next (ties:
the earlier arrival). A user's tenth job carries tag 9, another user's first one arrives with the
current V, so it goes before every job of the first user that is not already on its way.

Whoever may have made room pumps: a submit, a worker taking a message (`engine.worker` calls
`pump` as each delivery starts) and each worker's heartbeat round. One pump runs at a time per
queue (a lock that expires, so a killed pumper blocks nobody), and a job leaves the set only
after it was published: a pumper killed in between publishes it twice at worst, and the worker
runs a job once (a delivery of a job that already started or ended is dropped).

The broker list of a fair queue never holds more than `ahead` jobs: what scales workers on a
backlog reads `backlog_key(queue)` too (deploy/k8s's KEDA objects do).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

PUMP_LOCK_S = 10
_PREFIX = "clipbot:fair:"

# KEYS: jobs zset, last-tag hash, V, sequence, backlog list. ARGV: owner, job id. Returns the tag.
_PUSH = """
local v = tonumber(redis.call('GET', KEYS[3]) or '0')
local last = redis.call('HGET', KEYS[2], ARGV[1])
local tag = v
if last then tag = math.max(v, tonumber(last) + 1) end
redis.call('HSET', KEYS[2], ARGV[1], tag)
local seq = redis.call('INCR', KEYS[4])
redis.call('ZADD', KEYS[1], tag, string.format('%015d', seq) .. ':' .. ARGV[2] .. ':' .. ARGV[1])
redis.call('RPUSH', KEYS[5], ARGV[2])
return tostring(tag)
"""

# Release the pump lock only if it is still ours.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def backlog_key(broker_queue: str) -> str:
    """A Redis list of the held-back jobs' ids (arrival order): its length is the backlog the
    broker list does not show, for what can only read list lengths (KEDA's redis scaler, the
    queue-depth metric)."""
    return f"{_PREFIX}{broker_queue}:backlog"


@dataclass(frozen=True)
class Waiting:
    """A job the fair queue holds back: its id, owner and tag."""

    job_id: str
    owner: str
    tag: float
    member: str

    @classmethod
    def parse(cls, member: bytes | str, tag: float) -> "Waiting":
        text = member.decode() if isinstance(member, bytes) else member
        _seq, job_id, owner = text.split(":", 2)
        return cls(job_id, owner, float(tag), text)


class FairQueue:
    """The held-back jobs of one broker queue, and the pump that hands them to the broker.

    `publish(job_id)` sends a job to the broker and returns False when the job ended meanwhile
    (cancelled while it waited): it is dropped without taking a place.
    """

    def __init__(self, client: "Redis", broker_queue: str, *, ahead: int,
                 publish: Callable[[str], bool]) -> None:
        self._redis = client
        self.broker_queue = broker_queue
        self.ahead = max(1, ahead)
        self._publish = publish
        base = f"{_PREFIX}{broker_queue}:"
        self._jobs, self._last, self._v, self._seq, self._lock = (
            base + "jobs", base + "last", base + "v", base + "seq", base + "pump")
        self.backlog_key = backlog_key(broker_queue)

    def push(self, job_id: str, owner: str) -> float:
        """Hold `job_id` back in `owner`'s turn; returns its tag."""
        keys = [self._jobs, self._last, self._v, self._seq, self.backlog_key]
        return float(self._redis.eval(_PUSH, len(keys), *keys, owner, job_id))

    def waiting(self) -> list[Waiting]:
        """The held-back jobs, next first."""
        return [Waiting.parse(m, s) for m, s in self._redis.zrange(self._jobs, 0, -1, withscores=True)]

    def handed_out(self) -> int:
        """Messages in the broker queue that no worker took yet."""
        return int(self._redis.llen(self.broker_queue))

    def position(self, job_id: str) -> int | None:
        """1 = next to run; None when the job is not held back here."""
        for i, item in enumerate(self.waiting()):
            if item.job_id == job_id:
                return self.handed_out() + i + 1
        return None

    def remove(self, job_id: str) -> bool:
        """Drop a held-back job (it was cancelled); False when it is not here."""
        gone = [w.member for w in self.waiting() if w.job_id == job_id]
        if gone:
            self._redis.lrem(self.backlog_key, 1, job_id)
        return bool(gone) and bool(self._redis.zrem(self._jobs, *gone))

    def pump(self) -> int:
        """Hand jobs to the broker until `ahead` wait there; returns how many were published."""
        published = 0
        for _ in range(3):  # a worker that took a message while we held the lock could not pump
            published += self._pump_once()
            if self.handed_out() >= self.ahead or not self._redis.zcard(self._jobs):
                break
        return published

    def _pump_once(self) -> int:
        token = uuid.uuid4().hex
        if not self._redis.set(self._lock, token, nx=True, ex=PUMP_LOCK_S):
            return 0
        published = 0
        try:
            while self.handed_out() < self.ahead:
                first = self._redis.zrange(self._jobs, 0, 0, withscores=True)
                if not first:
                    break
                item = Waiting.parse(*first[0])
                if self._publish(item.job_id):
                    published += 1
                self._redis.zrem(self._jobs, item.member)
                self._redis.lrem(self.backlog_key, 1, item.job_id)
                self._redis.set(self._v, repr(item.tag))
        finally:
            self._redis.eval(_UNLOCK, 1, self._lock, token)
        return published
