"""The moderation log: who, what, which rule, when, where, which job; append-only per space.

Each entry is its own store key (`clipbot:audit:<platform>:<space>:<time>-<random>`), so the bot
and every worker append without a read-modify-write race; past `keep` entries the oldest go.
Admins read it with /audit (the space they are in) and `clipbot audit --platform P --space S`.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.wire import Wire

if TYPE_CHECKING:
    from engine.store import Store

__all__ = ["AuditEntry", "AuditLog"]

_KEY = "clipbot:audit:"
ACTIONS = ("refused", "blurred", "stopped", "deleted", "policy")


@dataclass(frozen=True)
class AuditEntry(Wire):
    """One moderation action. `action`: refused (a prompt), blurred or stopped (a picture),
    deleted (a result), policy (a channel's policy changed)."""

    action: str
    rule: str
    user: str
    channel: str
    at: float = 0.0
    job_id: str = ""
    by: str = ""  # who did it, when not the requester (an admin deleting, setting a policy)
    detail: str = ""


class AuditLog:
    """The log of one store; entries are kept per (platform, space), the newest `keep`."""

    def __init__(self, store: "Store", *, keep: int = 1000) -> None:
        self._store, self._keep = store, keep

    def record(self, platform: str, space: str, entry: AuditEntry) -> None:
        """Append `entry` (stamped now unless it carries a time); blocking."""
        at = entry.at or time.time()
        stamped = AuditEntry(**{**entry.to_json(), "at": at})
        prefix = _prefix(platform, space)
        self._store.set(f"{prefix}{int(at * 1e6):020d}-{secrets.token_hex(4)}", stamped.to_json())
        keys = self._store.keys(prefix)
        for old in keys[: max(0, len(keys) - self._keep)]:
            self._store.delete(old)

    def recent(self, platform: str, space: str, last: int = 20) -> list[AuditEntry]:
        """The newest `last` entries, newest first; blocking."""
        keys = self._store.keys(_prefix(platform, space))[-last:] if last > 0 else []
        found = (self._store.get(key) for key in reversed(keys))
        return [AuditEntry.from_json(value) for value in found if value]


def _prefix(platform: str, space: str) -> str:
    return f"{_KEY}{platform}:{space}:"
