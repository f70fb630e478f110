"""/settings: a user's own /imagine defaults in one server or workspace (light: no torch).

Stored per platform, space and user in the state store (no TTL: they are the user's choices). A
new /imagine takes the preset, size, drawer and `every` from them where the command leaves those
out; a job built on an earlier one takes the earlier job's first. `private` makes the user's
/imagine progress ephemeral where the platform can (Discord): only the final picture is public.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from bot.commands import Reply, command
from bot.markup import bold, code
from engine.errors import UserError
from engine.wire import Wire
from plugins.imagine.plan import Asked, ImagineSettings, check_request
from plugins.imagine.prompts import parse_size

if TYPE_CHECKING:
    from bot.commands import Request
    from engine.store import Store

_KEY = "clipbot:imagine:prefs:"


@dataclass(frozen=True)
class Preferences(Wire):
    preset: str | None = None
    size: str | None = None
    drawer: str | None = None
    every: int | None = None
    private: bool = False

    OMIT_NONE = frozenset({"preset", "size", "drawer", "every"})


def _key(request: "Request") -> str:
    return f"{_KEY}{request.platform}:{request.space_id}:{request.user_id}"


def preferences(store: "Store", request: "Request") -> Preferences:
    """The requester's /settings here (blocking: a store read)."""
    raw = store.get(_key(request))
    return Preferences.from_json(raw) if raw else Preferences()


def with_defaults(asked: Asked, mine: Preferences) -> Asked:
    """What was asked, with the requester's /settings where it left them out (a fresh job only:
    one built on an earlier job keeps that job's settings)."""
    if asked.from_job:
        return asked
    return dataclasses.replace(asked, preset=asked.preset or mine.preset, size=asked.size or mine.size or "",
                               drawer=asked.drawer or mine.drawer,
                               every=asked.every if asked.every is not None else mine.every)


@command(name="settings")
async def settings_command(
    ctx,
    preset: Annotated[Literal["draft", "normal", "best"], "your default /imagine quality preset"] = None,
    size: Annotated[str, "your default picture size, e.g. 256 or 256x192"] = "",
    drawer: Annotated[Literal["auto", "vqgan", "pixels"], "your default drawer"] = None,
    every: Annotated[int, "your default: a snapshot every N steps"] = None,
    private: Annotated[bool, "show your /imagine progress only to you (Discord); the picture stays public"] = None,
    clear: Annotated[bool, "forget your settings here"] = False,
) -> Reply:
    """Your own /imagine defaults in this server or workspace: preset, size, drawer, every, private."""
    limits: ImagineSettings = ctx.plugin_settings("imagine")
    store, request = ctx.engine.store, ctx.request
    if clear:
        await ctx.run_blocking(store.delete, _key(request))
    mine = await ctx.run_blocking(preferences, store, request)
    changes = {k: v for k, v in {"preset": preset, "drawer": drawer, "every": every, "private": private}.items()
               if v is not None}
    if size:
        width, height = parse_size(size)
        check_request(limits, size=(width, height), steps=None, every=None)
        changes["size"] = f"{width}x{height}"
    if every is not None and every < 1:
        raise UserError("every must be at least 1 (a snapshot every N steps).")
    if changes:
        mine = dataclasses.replace(mine, **changes)
        await ctx.run_blocking(store.set, _key(request), mine.to_json())
    shown = [f"{name} {code(str(value))}" for name, value in mine.to_json().items()]
    text = f"{bold('Your /imagine settings here')}: " + " · ".join(shown)
    return Reply(text=text, ephemeral=True, data=mine.to_json())
