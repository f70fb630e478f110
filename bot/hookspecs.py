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


@hookspec
def clipbot_prepare(settings, at_worker_start, report):
    """Prepare, ahead of the first request, what this plugin's tasks would otherwise compute
    on first use (e.g. /whatis's ImageNet label embeddings, kept in a disk cache).

    `clipbot models pull` calls it with `at_worker_start=False` after downloading the weights;
    every worker process that runs jobs calls it once at start with `at_worker_start=True`, in
    a background thread (work there competes with jobs: do it only when a setting asks for it).
    It runs where models may load: import heavy modules inside the function, never at plugin
    import. `report(message)` shows a progress line to the operator. Raise `UserError` for a
    problem the operator can fix; a worker logs it and carries on.
    """
