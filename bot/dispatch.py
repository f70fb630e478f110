"""Route a `Request` to its plugin handler, convert options, stream `Reply`s, map errors.

Every adapter (local terminal, Discord, Slack) calls `Dispatcher.handle`; nothing here knows
which platform asked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import inspect
import logging
import uuid
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, TypeVar

import pluggy

from bot.commands import CommandSpec, Reply, Request
from engine.errors import UserError
from engine.face import EngineFace
from engine.quotas import Requester

if TYPE_CHECKING:
    from bot.app import App
    from bot.config import Settings
    from engine.app import Engine
    from engine.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")



def requester_of(request: Request) -> Requester:
    """Who asked, as quotas and fair queueing see them."""
    return Requester(platform=request.platform, user_id=request.user_id, space_id=request.space_id,
                     channel_id=request.channel_id, is_admin=request.is_admin)


class CommandContext:
    """What a handler gets besides its options.

    Handlers run on the adapter's event loop (a Discord gateway heartbeat shares it), so anything
    that may block, store reads and writes, Pillow, file I/O, goes through `run_blocking`.
    """

    def __init__(self, request: Request, dispatcher: "Dispatcher") -> None:
        self.request: Request = request
        self.dispatcher: Dispatcher = dispatcher
        self.app: "App" = dispatcher  # type: ignore[assignment]  # the running App (bot.app), a Dispatcher
        # submit, run, follow, cancel, job records, pending, blobs; jobs count against the requester's quotas
        self.engine: EngineFace = dispatcher.face.for_requester(requester_of(request))
        self.settings: "Settings" = dispatcher.settings
        self.store: "Store" = dispatcher.engine.store  # small JSON state

    def plugin_settings(self, name: str) -> Any:
        """The settings object of plugin `name` (its `clipbot_settings` hook)."""
        return self.dispatcher.plugin_settings(name)

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a worker thread so the event loop keeps serving."""
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


class Dispatcher:
    """Routes requests to command handlers. `bot.app.App` builds on it; adapters hold the App."""

    def __init__(self, pm: pluggy.PluginManager, engine: "Engine", settings: "Settings",
                 plugin_settings: dict[str, Any] | None = None) -> None:
        self.pm = pm
        self.engine = engine  # the whole engine: for bot/ (adapters, long jobs), not for plugins
        self.face = EngineFace(engine)  # what plugins see (`ctx.engine`, `app.face`)
        self.settings = settings
        self._plugin_settings: dict[str, Any] = dict(plugin_settings or {})
        self.commands: dict[str, CommandSpec] = {}
        for plugin_specs in pm.hook.clipbot_commands():
            for spec in plugin_specs or ():
                if spec.name in self.commands:
                    raise ValueError(f"two plugins define the command /{spec.name}")
                self.commands[spec.name] = spec

    def plugin_settings(self, name: str) -> Any:
        try:
            return self._plugin_settings[name]
        except KeyError:
            raise KeyError(f"plugin {name!r} has no settings (not loaded, or no clipbot_settings hook)") from None

    def task_modules(self) -> list[str]:
        return [m for modules in self.pm.hook.clipbot_task_modules() for m in modules or ()]

    def spec(self, name: str) -> CommandSpec:
        """The command called `name`, or a UserError that says what exists."""
        spec = self.commands.get(name)
        if spec is not None:
            return spec
        close = difflib.get_close_matches(name, list(self.commands), n=1)
        hint = f" Did you mean /{close[0]}?" if close else ""
        raise UserError(f"I don't know the command /{name}.{hint} Try /help.")

    def convert_options(self, spec: CommandSpec, raw: dict[str, Any]) -> dict[str, Any]:
        unknown = [name for name in raw if spec.option(name) is None]
        if unknown:
            valid = ", ".join(o.name for o in spec.options) or "none"
            raise UserError(f"/{spec.name} has no option '{unknown[0]}' (options: {valid}). Usage: {spec.usage()}")
        values = {}
        for option in spec.options:
            if option.name in raw and raw[option.name] not in (None, ""):
                values[option.name] = option.convert(raw[option.name])
            elif option.required:
                raise UserError(f"/{spec.name} needs '{option.name}'. Usage: {spec.usage()}")
            else:
                values[option.name] = option.default
        return values

    async def handle(self, request: Request) -> AsyncIterator[Reply]:
        """Answer one request; always ends with a `final` reply, errors included."""
        final_seen = False
        try:
            spec = self.spec(request.command)
            if not spec.offered_on(request.platform):
                where = ", ".join(sorted(spec.platforms or ()))
                raise UserError(f"/{spec.name} is not available on {request.platform} (only on {where}).")
            if spec.admin_only and not request.is_admin:
                raise UserError(f"Only admins can use /{spec.name}.")
            options = self.convert_options(spec, request.options)
            result = spec.handler(CommandContext(request, self), **options)
            if inspect.isasyncgen(result):
                async for reply in result:
                    final_seen = final_seen or reply.final
                    yield reply
            else:
                reply = await result
                final_seen = True
                yield dataclasses.replace(reply, final=True)
        except UserError as exc:
            final_seen = True
            yield Reply(text=str(exc), error=True, final=True, ephemeral=True, data={"error": "user"})
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("handler for /%s crashed (ref %s)", request.command, ref, extra={"ref": ref})
            final_seen = True
            yield Reply(text=f"Something went wrong on my side (ref {ref}). It has been logged.", error=True,
                        final=True, data={"error": "internal", "ref": ref})
        if not final_seen:
            yield Reply(final=True)
