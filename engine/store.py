"""Small JSON state (job records, per-channel label sets, cancel flags) in Redis or SQLite.

The embedded engine keeps it in a SQLite file under the data dir so settings such as label
sets survive restarts; the distributed engine shares it through Redis.
"""

from __future__ import annotations

import functools
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

from engine.datadir import create_file, make_dir
from engine.errors import BackendUnavailable

F = TypeVar("F", bound=Callable[..., Any])


class Store(Protocol):
    def get(self, key: str) -> Any | None: ...
    def set(self, key: str, value: Any, *, ttl: int | None = None) -> None: ...
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...


class SqliteStore:
    """JSON values in one SQLite table; `path=":memory:"` for a throwaway store."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        if str(path) != ":memory:":
            make_dir(Path(path).parent)
            create_file(path)  # 0600; SQLite gives its -wal and -shm files the same mode
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT, expires REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires)")
        self._lock = threading.Lock()
        self._next_purge = 0.0

    def get(self, key: str) -> Any | None:
        with self._lock:
            row = self._db.execute("SELECT value, expires FROM kv WHERE key = ?", (key,)).fetchone()
        if row is None or (row[1] is not None and row[1] < time.time()):
            return None
        return json.loads(row[0])

    def set(self, key: str, value: Any, *, ttl: int | None = None) -> None:
        now = time.time()
        expires = now + ttl if ttl else None
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, json.dumps(value), expires)
            )
            if now >= self._next_purge:  # expired rows go for real, at most once a second
                self._next_purge = now + 1.0
                self._db.execute("DELETE FROM kv WHERE expires < ?", (now,))

    def delete(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def keys(self, prefix: str) -> list[str]:
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self._db.execute(
                "SELECT key FROM kv WHERE key LIKE ? ESCAPE '\\' AND (expires IS NULL OR expires >= ?)",
                (pattern, time.time()),
            ).fetchall()
        return sorted(r[0] for r in rows)


def redis_where(client) -> str:
    """host:port/db of a Redis client, for messages (never the password)."""
    kw = client.connection_pool.connection_kwargs
    where = kw.get("path") or f"{kw.get('host', 'localhost')}:{kw.get('port', 6379)}"
    return f"{where}/{kw.get('db', 0)}"


def reachable(method: F) -> F:
    """Turn "Redis is down" into one user-facing BackendUnavailable instead of a traceback."""
    import redis

    @functools.wraps(method)
    def call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BackendUnavailable(redis_where(self._redis), _reason(exc)) from exc

    return call  # type: ignore[return-value]


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.rsplit(". ", 1)[-1].strip(" .") if "Connection refused" not in text else "connection refused"


class RedisStore:
    """JSON values under plain Redis keys."""

    def __init__(self, client) -> None:
        self._redis = client

    @reachable
    def get(self, key: str) -> Any | None:
        raw = self._redis.get(key)
        return None if raw is None else json.loads(raw)

    @reachable
    def set(self, key: str, value: Any, *, ttl: int | None = None) -> None:
        self._redis.set(key, json.dumps(value), ex=ttl)

    @reachable
    def delete(self, key: str) -> None:
        self._redis.delete(key)

    @reachable
    def keys(self, prefix: str) -> list[str]:
        escaped = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
        return sorted(k.decode() if isinstance(k, bytes) else k for k in self._redis.scan_iter(match=escaped + "*"))
