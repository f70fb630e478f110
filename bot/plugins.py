"""Build the plugin manager: hook specs, then built-in plugins, then installed ones.

Built-in features register exactly like third-party packages (entry-point group
`clipbot.plugins`). Settings decide which load: `plugins` is an allowlist (`*` = all),
`disabled_plugins` always wins, `extra_plugins` names modules to load without packaging.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Callable

import pluggy

from bot import hookspecs

if TYPE_CHECKING:
    from bot.config import Settings
    from engine.tasks import Queue

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "clipbot.plugins"
BUILTIN_PLUGINS = {"help": "bot.builtin", "whatis": "plugins.whatis", "imagine": "plugins.imagine",
                   "search": "plugins.search", "safety": "plugins.safety", "describe": "plugins.describe",
                   "localchat": "bot.adapters.local.channel"}


def _enabled(name: str, settings: "Settings") -> bool:
    if name in settings.disabled_plugins:
        return False
    return "*" in settings.plugins or name in settings.plugins


def build_plugin_manager(settings: "Settings") -> pluggy.PluginManager:
    """A fresh manager for these settings; a plugin that fails to load is logged and skipped."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.clipbot_errors = {}  # plugin name -> why it did not load, shown by `clipbot plugins`
    for name, module in BUILTIN_PLUGINS.items():
        if _enabled(name, settings):
            pm.register(importlib.import_module(module), name=name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if _enabled(ep.name, settings):
            _register(pm, ep.name, ep.load)
    for module in settings.extra_plugins:
        _register(pm, module, lambda m=module: importlib.import_module(m))
    return pm


def _register(pm: pluggy.PluginManager, name: str, load: Callable[[], object]) -> None:
    if pm.has_plugin(name):
        pm.clipbot_errors[name] = f"a plugin named {name!r} is already loaded"
        log.error("plugin %s not loaded: name already taken", name)
        return
    try:
        plugin = load()
        refused = _async_hooks(plugin)
        if refused:
            pm.clipbot_errors[name] = (f"hook {refused[0]} is `async def`: clipbot hooks are plain functions "
                                       "(they already run off the event loop)")
            log.error("plugin %s not loaded: %s", name, pm.clipbot_errors[name])
            return
        pm.register(plugin, name=name)
    except Exception as exc:  # a broken third-party plugin must not take the bot down
        pm.clipbot_errors[name] = f"{type(exc).__name__}: {exc}"
        log.exception("plugin %s failed to load", name)


def _async_hooks(plugin: object) -> list[str]:
    """The hook implementations of `plugin` written `async def` (pluggy would never await them)."""
    marker = f"{hookspecs.PROJECT}_impl"
    return [name for name in dir(plugin)
            if hasattr(getattr(plugin, name, None), marker) and inspect.iscoroutinefunction(getattr(plugin, name))]


def plugin_settings(pm: pluggy.PluginManager) -> dict[str, Any]:
    """Each plugin's settings object (`clipbot_settings` hook), read from the environment now.

    A bad value is a UserError naming the variable, so `clipbot` says it in one line."""
    from pydantic import ValidationError

    from bot.config import env_prefix
    from engine.errors import UserError

    loaded: dict[str, Any] = {}
    for impl in pm.hook.clipbot_settings.get_hookimpls():
        cls = impl.function()
        if cls is None:
            continue
        try:
            loaded[impl.plugin_name] = cls.load(impl.plugin_name)
        except ValidationError as exc:
            first = exc.errors()[0]
            name = env_prefix(impl.plugin_name) + str(first["loc"][0]).upper() if first.get("loc") else "a setting"
            raise UserError(f"invalid setting {name}: {first['msg']}") from None
    return loaded


def declared_queues(pm: pluggy.PluginManager) -> dict[str, "Queue"]:
    """Queue name -> `engine.tasks.Queue`, from every plugin's `clipbot_queues` (first wins)."""
    queues: dict[str, Queue] = {}
    # pluggy calls the last registered plugin first; keep registration order (the core's first).
    for declared in reversed(pm.hook.clipbot_queues()):
        for queue in declared or ():
            queues.setdefault(queue.name, queue)
    return queues
