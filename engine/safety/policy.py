"""What a channel does with a picture that matches a concept: `allow`, `blur` or `stop`.

A channel's own policy (set by an admin with /safety) wins; else an age-restricted channel
(Discord's nsfw flag) allows; else the `policy` setting (blur by default). The blocklist is not a
policy: it applies everywhere. The handler decides the policy and sends it with the job
(`Moderation`), so the worker needs no chat knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, get_args

from engine.safety.settings import Policy
from engine.wire import Wire

if TYPE_CHECKING:
    from engine.store import Store

__all__ = ["POLICIES", "Moderation", "channel_policy", "choose_policy", "owner_of", "remember_owner",
           "set_channel_policy"]

POLICIES: tuple[str, ...] = get_args(Policy)
_KEY = "clipbot:safety:policy:"


@dataclass(frozen=True)
class Moderation(Wire):
    """Who asked, where, and the policy there: what a job needs to check its pictures and to log."""

    policy: str = "blur"
    platform: str = ""
    space: str = ""
    channel: str = ""
    user: str = ""


def _key(platform: str, space: str, channel: str) -> str:
    return f"{_KEY}{platform}:{space}:{channel}"


def channel_policy(store: "Store", platform: str, space: str, channel: str) -> str | None:
    """The policy an admin set for this channel, or None (blocking: a store read)."""
    value = store.get(_key(platform, space, channel))
    return value if value in POLICIES else None


def set_channel_policy(store: "Store", platform: str, space: str, channel: str, policy: str | None) -> None:
    """Set (or, with None, clear) the channel's policy (blocking)."""
    if policy is None:
        store.delete(_key(platform, space, channel))
    elif policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}")
    else:
        store.set(_key(platform, space, channel), policy)


def choose_policy(stored: str | None, *, nsfw: bool, default: str) -> str:
    """The channel's own policy, else `allow` in an age-restricted channel, else the default."""
    if stored is not None:
        return stored
    return "allow" if nsfw else default


_OWNER = "clipbot:safety:owner:"
OWNER_TTL = 30 * 86400


def remember_owner(store: "Store", job_id: str, moderation: Moderation) -> None:
    """Who asked for job `job_id`'s result, where: what deciding who may delete it reads (blocking)."""
    store.set(_OWNER + job_id, moderation.to_json(), ttl=OWNER_TTL)


def owner_of(store: "Store", job_id: str) -> Moderation | None:
    """Who asked for job `job_id`, or None once forgotten (blocking)."""
    value = store.get(_OWNER + job_id)
    return Moderation.from_json(value) if value else None
