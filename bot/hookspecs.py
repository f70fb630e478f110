"""The plugin contract. Each function here is a hook; its docstring is the specification.

Plugins implement hooks with `@hookimpl` and are registered by `bot.plugins.build_plugin_manager`:
built-in features (`plugins.whatis`, ...) exactly like third-party packages that declare an
entry point in the `clipbot.plugins` group. A plugin module must import without torch: put
model code in the modules named by `clipbot_task_modules`, which only workers import.
"""

from __future__ import annotations

import pluggy

PROJECT = "clipbot"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def clipbot_commands():
    """Return the slash commands this plugin serves, as a list of `bot.commands.CommandSpec`.

    Called once when the dispatcher is built, in every process that takes commands (the
    chat adapters and the local chat). Command names must be unique across plugins; a
    clash is an error at start-up, not a silent override. Build specs with
    `bot.commands.command`, which reads the handler's signature and docstring.
    """


@hookspec
def clipbot_task_modules():
    """Return dotted names of the modules that define this plugin's engine tasks.

    Only workers (and the embedded engine) import these modules, so they may import torch
    and load models. A task is a function decorated with `engine.tasks.task`; it is bound to
    the Celery app under its declared name and queue when the worker starts. Return an
    empty list if the plugin runs no background work.
    """


# TEMPORARY stubs of INTERFACES.md hooks (main's version replaces them on merge).
@hookspec
def clipbot_image_posted(app, event):
    """An image was posted (stub)."""


@hookspec
def clipbot_message_deleted(app, event):
    """A message or file was deleted (stub)."""


@hookspec
def clipbot_channel_removed(app, event):
    """The bot lost a channel (stub)."""
