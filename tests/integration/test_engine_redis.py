"""The engine's Redis-backed stores, event log and feed against the machine's real Redis."""

import pytest

from engine.blobs import RedisBlobStore
from engine.feed import RedisFeed
from engine.jobs import JobBook, RedisEventLog
from engine.store import RedisStore
from tests.conftest import check_blobs, check_event_feed, check_store


@pytest.fixture
def redis_client(redis_url):
    import redis

    return redis.Redis.from_url(redis_url)


def test_redis_store_roundtrip_keys_and_ttl(redis_client):
    check_store(RedisStore(redis_client))


def test_redis_blobs(redis_client):
    check_blobs(RedisBlobStore(redis_client))


def test_redis_event_feed(redis_client, redis_url):
    book = JobBook(RedisStore(redis_client), RedisEventLog(redis_client))
    check_event_feed(book, RedisFeed(redis_url, book.record_key))
