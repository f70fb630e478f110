"""A plugin that gives workers the engine tests' sample tasks (CLIPBOT_EXTRA_PLUGINS=tests.sample_plugin)."""

from bot.hookspecs import hookimpl


@hookimpl
def clipbot_task_modules():
    return ["tests.sample_tasks", "tests.sample_long_tasks"]
