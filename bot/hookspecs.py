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
def clipbot_settings():
    """Return this plugin's settings class (a subclass of `bot.config.PluginSettings`), or None.

    Fields are read from the environment (and `.env`) with the prefix `CLIPBOT_<PLUGIN>_`, where
    PLUGIN is the name the plugin is registered under, upper-cased (`whatis` reads
    `CLIPBOT_WHATIS_TOP`). The instance is built once per process, next to the core settings;
    handlers get it as `ctx.plugin_settings("<plugin>")` and tasks as `job.plugin_settings(...)`.
    A bad value stops start-up with one line naming the variable. `clipbot plugins` lists the
    settings, and every one must be documented in `.env.example`.
    """


@hookspec
def clipbot_queues():
    """Return the engine queues this plugin's tasks use, as a list of `engine.tasks.Queue`.

    Queues separate kinds of work so a quick job never waits behind a long one: the core
    declares `gpu` (quick model work such as /whatis) and `io` (network). A plugin whose tasks
    run for minutes declares its own (e.g. `gpu-long`) and names it in `@task(queue=...)`.
    Declaring a queue twice with the same name is allowed (the first description wins); a task
    on an undeclared queue is an error when workers start. `clipbot worker --queues` picks what a
    worker serves; by default it serves every declared queue.
    """


@hookspec
def clipbot_image_posted(app, event):
    """A picture was posted: `event` is a `bot.events.ImagePosted`; `app` is the running `App`.

    Adapters call this (through `App.image_posted`) for every new message with images, after
    storing the bytes in the blob store, and backfills call it for old ones. It runs off the
    event loop and must return quickly: queue engine work (`app.engine.submit`) rather than
    running a model here. Exceptions are logged and do not stop other plugins. The blobs of
    `event.attachments` are deleted once the search plugin has indexed them: a plugin that needs
    the bytes later stores its own copy here (`app.engine.blobs.put(app.engine.blobs.get(key))`).
    """


@hookspec
def clipbot_message_deleted(app, event):
    """A message (or some of its files) was deleted: `event` is a `bot.events.MessageDeleted`.

    Whatever a plugin derived from that message (index entries, thumbnails) must go. Called
    through `App.message_deleted`, off the event loop; exceptions are logged.
    """


@hookspec
def clipbot_channel_removed(app, event):
    """The bot left a channel or lost access to it: `event` is a `bot.events.ChannelRemoved`.

    Plugins forget what they learned there. Called through `App.channel_removed`, off the event
    loop; exceptions are logged.
    """


@hookspec
def clipbot_startup(app):
    """The chat process has started: its adapters are connected and registered with `app`.

    Called once per process (never in workers), off the event loop, e.g. to resume following
    long jobs that were running when the bot last stopped. Exceptions are logged.
    """


@hookspec
def clipbot_prepare(app, at_worker_start, report):
    """Prepare, ahead of the first request, what this plugin's tasks would otherwise compute
    on first use (e.g. /whatis's ImageNet label embeddings, kept in a disk cache). `app` is the
    `App` (`app.settings`, `app.plugin_settings(name)`) of the process that prepares.

    `clipbot models pull` calls it with `at_worker_start=False` after downloading the weights;
    every worker process that runs jobs calls it once at start with `at_worker_start=True`, in
    a background thread (work there competes with jobs: do it only when a setting asks for it).
    It runs where models may load: import heavy modules inside the function, never at plugin
    import. `report(message)` shows a progress line to the operator. Raise `UserError` for a
    problem the operator can fix; a worker logs it and carries on.
    """
