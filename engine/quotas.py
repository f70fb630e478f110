"""Fair shares: how many jobs a user may have at once, and how many GPU-seconds a user, a space
(Discord server, Slack workspace) and a channel may use per day.

The engine checks a `Requester`'s limits as a job is submitted (`Engine.submit`) and refuses with
a `QuotaExceeded` that names the limit and when it resets; admins are exempt. A worker charges a
job's run time (seconds between start and end on the worker, which in production is a GPU) to the
user, the space and the channel when it ends. Limits default to the settings
(`CLIPBOT_QUOTA_*`); an admin changes them for their own space from chat (`/quota`), stored here.
Days are UTC days: usage resets at 00:00 UTC.

The count of a user's jobs is kept per user as a list of job ids, pruned of ended jobs at every
check, so a job whose end was never seen (its worker died, its record expired) frees its place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

from engine.errors import UserError
from engine.wire import Wire

if TYPE_CHECKING:
    from redis import Redis

    from engine.jobs import JobBook, JobRecord
    from engine.settings import EngineSettings
    from engine.store import Store

DAY = 86400
_ACTIVE = "clipbot:quota:active:"  # + owner -> [[job id, "long"|"quick"], ...]
_USAGE = "clipbot:quota:usage:"  # + day + ":" + scope + ":" + id -> GPU-seconds
_LIMITS = "clipbot:quota:limits:"  # + platform + ":" + space -> {limit name: value}


@dataclass(frozen=True)
class Requester(Wire):
    """Who asked for a job: what quotas and fair queueing go by."""

    platform: str
    user_id: str
    space_id: str = ""
    channel_id: str = ""
    is_admin: bool = False

    @property
    def owner(self) -> str:
        """The user across the deployment: the same Slack user in two channels is one owner."""
        return f"{self.platform}:{self.user_id}"

    @property
    def space(self) -> str:
        return f"{self.platform}:{self.space_id}"

    @property
    def channel(self) -> str:
        return f"{self.platform}:{self.space_id}:{self.channel_id}"


@dataclass(frozen=True)
class Limits(Wire):
    """One space's limits; 0 means no limit. The defaults are the settings (`Quotas.defaults`)."""

    long_jobs: int
    quick_jobs: int
    user_gpu_seconds: float
    space_gpu_seconds: float
    channel_gpu_seconds: float


LIMIT_HELP = {
    "long_jobs": "long jobs (/imagine) a user may have queued or running at once",
    "quick_jobs": "quick jobs (/whatis, /search) a user may have queued or running at once",
    "user_gpu_seconds": "GPU-seconds a user may use per day",
    "space_gpu_seconds": "GPU-seconds the whole server/workspace may use per day",
    "channel_gpu_seconds": "GPU-seconds one channel may use per day",
}


@dataclass(frozen=True)
class Usage(Wire):
    """A requester's usage today against their space's limits."""

    limits: Limits
    long_jobs: int
    quick_jobs: int
    user_gpu_seconds: float
    space_gpu_seconds: float
    channel_gpu_seconds: float
    resets_in: float


class QuotaExceeded(UserError):
    """A job refused because a limit is reached; the message names it and when it resets."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


def today(now: float | None = None) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def resets_in(now: float | None = None) -> float:
    now = time.time() if now is None else now
    return DAY - now % DAY


def _duration(seconds: float) -> str:
    hours, minutes = int(seconds // 3600), int(seconds % 3600 // 60)
    return f"{hours} h {minutes} min" if hours else f"{max(1, minutes)} min"


class Quotas:
    """Limits, usage and the admission check, over the engine's store."""

    def __init__(self, settings: "EngineSettings", store: "Store", book: "JobBook", redis: "Redis | None" = None
                 ) -> None:
        self._settings = settings
        self._store = store
        self._book = book
        self._redis = redis  # when distributed: usage is added atomically (INCRBYFLOAT), workers end jobs at once

    def defaults(self) -> Limits:
        s = self._settings
        return Limits(long_jobs=s.quota_long_jobs, quick_jobs=s.quota_quick_jobs,
                      user_gpu_seconds=s.quota_user_gpu_seconds, space_gpu_seconds=s.quota_space_gpu_seconds,
                      channel_gpu_seconds=s.quota_channel_gpu_seconds)

    def limits(self, platform: str, space_id: str) -> Limits:
        """The limits of one space: the settings, with what its admins changed."""
        changed = self._store.get(f"{_LIMITS}{platform}:{space_id}") or {}
        known = {f.name for f in fields(Limits)}
        return replace(self.defaults(), **{k: v for k, v in changed.items() if k in known})

    def set_limit(self, platform: str, space_id: str, name: str, value: float) -> Limits:
        """Change one limit for a space (an admin's `/quota set`); returns the space's limits."""
        if name not in LIMIT_HELP:
            raise UserError(f"There is no limit called {name!r}. Limits: {', '.join(LIMIT_HELP)}.")
        if value < 0:
            raise UserError("A limit cannot be negative (0 means no limit).")
        key = f"{_LIMITS}{platform}:{space_id}"
        changed = dict(self._store.get(key) or {})
        changed[name] = int(value) if name.endswith("_jobs") else float(value)
        self._store.set(key, changed)
        return self.limits(platform, space_id)

    # ---- admission ---------------------------------------------------------------------------
    def admit(self, who: Requester, *, long: bool) -> None:
        """Refuse (QuotaExceeded) when a limit of `who` is reached; admins always pass."""
        if who.is_admin:
            return
        limits = self.limits(who.platform, who.space_id)
        kind, cap = ("long", limits.long_jobs) if long else ("quick", limits.quick_jobs)
        active = self._active(who.owner)
        if cap and sum(1 for _, k in active if k == kind) >= cap:
            noun = "long job" if long else "job"
            raise QuotaExceeded(
                f"You already have {cap} {noun}{'s' if cap != 1 else ''} queued or running (the limit per user). "
                "Wait for one to finish, or stop one with /cancel; /queue lists them.", f"{kind}_jobs")
        self._check_seconds(who, limits)

    def _check_seconds(self, who: Requester, limits: Limits) -> None:
        day = today()
        for scope, name, key, whose in (("user", "user_gpu_seconds", who.owner, "your"),
                                        ("space", "space_gpu_seconds", who.space, "this server's"),
                                        ("channel", "channel_gpu_seconds", who.channel, "this channel's")):
            cap = getattr(limits, name)
            if cap and self.used(day, scope, key) >= cap:
                raise QuotaExceeded(
                    f"That would go over {whose} daily GPU time ({cap:.0f} GPU-seconds a day, the "
                    f"{name} limit). It resets at 00:00 UTC, in {_duration(resets_in())}; /quota shows the usage.",
                    name)

    def started(self, who: Requester, job_id: str, *, long: bool) -> None:
        """Count a submitted job against its user until it ends."""
        active = self._active(who.owner)
        active.append([job_id, "long" if long else "quick"])
        self._store.set(_ACTIVE + who.owner, active, ttl=7 * DAY)

    def _active(self, owner: str) -> list[list[str]]:
        """The owner's jobs that have not ended (pruned and written back when some have)."""
        listed = self._store.get(_ACTIVE + owner) or []
        alive = [entry for entry in listed if (r := self._book.get(entry[0])) is not None and not r.finished]
        if len(alive) != len(listed):
            self._store.set(_ACTIVE + owner, alive, ttl=7 * DAY)
        return alive

    # ---- usage -------------------------------------------------------------------------------
    def used(self, day: str, scope: str, key: str) -> float:
        return float(self._store.get(f"{_USAGE}{day}:{scope}:{key}") or 0.0)

    def charge(self, record: "JobRecord") -> float:
        """Add an ended job's run time to its requester's, space's and channel's day; returns it."""
        raw = record.extra.get("requester")
        if not raw or not record.started_at or not record.finished_at:
            return 0.0
        who = Requester.from_json(raw)
        seconds = max(0.0, record.finished_at - record.started_at)
        day = today(record.finished_at)
        for scope, key in (("user", who.owner), ("space", who.space), ("channel", who.channel)):
            name = f"{_USAGE}{day}:{scope}:{key}"
            if self._redis is not None:  # a plain number is JSON too: the store reads it back
                self._redis.incrbyfloat(name, seconds)
                self._redis.expire(name, 2 * DAY)
            else:
                self._store.set(name, float(self._store.get(name) or 0.0) + seconds, ttl=2 * DAY)
        return seconds

    def usage(self, who: Requester) -> Usage:
        day, active = today(), self._active(who.owner)
        return Usage(limits=self.limits(who.platform, who.space_id),
                     long_jobs=sum(1 for _, k in active if k == "long"),
                     quick_jobs=sum(1 for _, k in active if k == "quick"),
                     user_gpu_seconds=self.used(day, "user", who.owner),
                     space_gpu_seconds=self.used(day, "space", who.space),
                     channel_gpu_seconds=self.used(day, "channel", who.channel),
                     resets_in=resets_in())
