"""Route a `Request` to its plugin handler, convert options, stream `Reply`s, map errors.

Every adapter (local terminal, Discord, Slack) calls `Dispatcher.handle`; nothing here knows
which platform asked.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import uuid
from typing import Any, AsyncIterator

import pluggy

from bot.commands import CommandSpec, Reply, Request
from engine.errors import UserError

log = logging.getLogger(__name__)

# Commands announced but not built yet; /help lists them and asking for one says so.
ROADMAP = {
    "search": "search this channel's image history by text or by image",
    "imagine": "generate a picture from a prompt with VQGAN+CLIP",
}


class CommandContext:
    """What a handler gets besides its options: the request, the engine, settings, state."""

    def __init__(self, request: Request, dispatcher: "Dispatcher") -> None:
        self.request = request
        self.dispatcher = dispatcher
        self.engine = dispatcher.engine
        self.settings = dispatcher.settings
        self.store = dispatcher.engine.store


class Dispatcher:
    def __init__(self, pm: pluggy.PluginManager, engine: Any, settings: Any) -> None:
        self.pm = pm
        self.engine = engine
        self.settings = settings
        self.commands: dict[str, CommandSpec] = {}
        self.history_sources: dict[str, Any] = {}  # TEMPORARY stub (INTERFACES.md)
        for plugin_specs in pm.hook.clipbot_commands():
            for spec in plugin_specs or ():
                if spec.name in self.commands:
                    raise ValueError(f"two plugins define the command /{spec.name}")
                self.commands[spec.name] = spec

    def task_modules(self) -> list[str]:
        return [m for modules in self.pm.hook.clipbot_task_modules() for m in modules or ()]

    def spec(self, name: str) -> CommandSpec:
        """The command called `name`, or a UserError that says what exists."""
        spec = self.commands.get(name)
        if spec is not None:
            return spec
        if name in ROADMAP:
            raise UserError(f"/{name} is not built yet: it will {ROADMAP[name]}. Try /help for what works today.")
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
                yield Reply(**{**reply.__dict__, "final": True})
        except UserError as exc:
            final_seen = True
            yield Reply(text=str(exc), error=True, final=True, ephemeral=True)
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("handler for /%s crashed (ref %s)", request.command, ref)
            final_seen = True
            yield Reply(text=f"Something went wrong on my side (ref {ref}). It has been logged.", error=True,
                        final=True)
        if not final_seen:
            yield Reply(final=True)

    # TEMPORARY stubs (INTERFACES.md): run the hooks off the event loop.
    async def image_posted(self, event: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.pm.hook.clipbot_image_posted, app=self, event=event)

    async def message_deleted(self, event: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.pm.hook.clipbot_message_deleted, app=self, event=event)

    async def channel_removed(self, event: Any) -> None:
        import asyncio

        await asyncio.to_thread(self.pm.hook.clipbot_channel_removed, app=self, event=event)
