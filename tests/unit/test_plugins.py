"""The plugin system and its meta-tests: every hook is documented and tested."""

import inspect
import re
import subprocess
import sys
import types

import pytest

from bot import hookspecs
from bot.commands import CommandSpec
from bot.config import Settings
from bot.plugins import BUILTIN_PLUGINS, build_plugin_manager
from tests.conftest import ROOT, make_settings

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("clipbot_"))


def test_hooks_exist():
    assert HOOKS == ["clipbot_channel_removed", "clipbot_commands", "clipbot_image_posted",
                     "clipbot_message_deleted", "clipbot_prepare", "clipbot_queues", "clipbot_settings", "clipbot_startup",
                     "clipbot_task_modules"]


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_docstrings_and_docs(hook):
    assert len(inspect.getdoc(getattr(hookspecs, hook)) or "") > 80, f"{hook} needs a real docstring"
    guide = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### `{hook}(" in guide, f"docs/plugins.md has no section for {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hooks_have_tests(hook):
    """Like datasette: each hook has a test named test_hook_<hook> somewhere under tests/."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert re.search(rf"def test_hook_{hook}\b", tests), f"no test_hook_{hook}"


def test_hook_clipbot_commands(tmp_path):
    pm = build_plugin_manager(make_settings(tmp_path))
    specs = [s for specs in pm.hook.clipbot_commands() for s in specs]
    assert all(isinstance(s, CommandSpec) for s in specs)
    assert {"help", "whatis", "labels"} <= {s.name for s in specs}


def test_hook_clipbot_task_modules(tmp_path):
    pm = build_plugin_manager(make_settings(tmp_path))
    modules = [m for ms in pm.hook.clipbot_task_modules() for m in ms]
    assert "plugins.whatis.tasks" in modules
    # the modules named are importable and really define tasks
    from engine.tasks import tasks_in
    import importlib

    names = [t.name for m in modules for t in tasks_in(importlib.import_module(m))]
    assert "whatis.classify" in names


def test_hook_clipbot_prepare(tmp_path, monkeypatch):
    """/whatis prepares the (here: a shortened) ImageNet label matrix for `models pull`, and for
    a worker only when CLIPBOT_WHATIS_PRECOMPUTE asks; the classify task then finds it on disk."""
    from bot.app import open_app
    from engine import progress
    from plugins.whatis import pipeline, tasks

    monkeypatch.setattr(tasks, "IMAGENET_CLASSNAMES", ("tench", "goldfish", "great white shark"))
    monkeypatch.setattr(progress, "_REPORT_EVERY_S", 0.0)  # the build's reports (engine.progress.BuildProgress)
    settings = make_settings(tmp_path, clip_model="tiny-test", device="cpu")
    cache = tmp_path / "cache" / "labels"
    lines: list[str] = []
    for precompute in ("false", "true"):
        monkeypatch.setenv("CLIPBOT_WHATIS_PRECOMPUTE", precompute)
        pipeline._memory.clear()
        with open_app(settings, start_worker=False) as app:
            app.pm.hook.clipbot_prepare(app=app, at_worker_start=True, report=lines.append)
        assert bool(list(cache.glob("*.pt"))) is (precompute == "true")
    assert lines and lines[-1] == "preparing ImageNet-1k labels: 100%"

    for entry in cache.iterdir():
        entry.unlink()
    monkeypatch.setenv("CLIPBOT_WHATIS_PRECOMPUTE", "false")  # `models pull` prepares regardless
    pipeline._memory.clear()
    with open_app(settings, start_worker=False) as app:
        app.pm.hook.clipbot_prepare(app=app, at_worker_start=False, report=print)
    # the ImageNet matrix, exactly what `whatis.classify` with labels=None looks up, and the
    # background's embeddings ("not sure" answers)
    key = pipeline._cache_key(tasks.clip_for(settings), tasks.IMAGENET_CLASSNAMES, pipeline.PROMPT_TEMPLATES)
    assert len(list(cache.glob("*.pt"))) == 2 and (cache / f"{key}.pt").is_file()


def test_builtins_register_like_third_party(tmp_path):
    pm = build_plugin_manager(make_settings(tmp_path))
    for name, module in BUILTIN_PLUGINS.items():
        assert pm.get_plugin(name).__name__ == module


def test_allowlist_and_disable(tmp_path):
    only_help = build_plugin_manager(make_settings(tmp_path, plugins=["help"]))
    assert only_help.has_plugin("help") and not only_help.has_plugin("whatis")
    no_whatis = build_plugin_manager(make_settings(tmp_path, disabled_plugins=["whatis"]))
    assert no_whatis.has_plugin("help") and not no_whatis.has_plugin("whatis")


def test_list_settings_parse_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPBOT_PLUGINS", "help, whatis")
    monkeypatch.setenv("CLIPBOT_WORKER_QUEUES", "gpu")
    s = Settings(_env_file=None, data_dir=tmp_path)
    assert s.plugins == ["help", "whatis"] and s.worker_queues == ["gpu"]


def test_tilde_in_path_settings_is_the_home_folder(monkeypatch, tmp_path):
    # .env.example's own line, uncommented into a .env file: no shell is there to expand the ~.
    line = next(l for l in (ROOT / ".env.example").read_text().splitlines() if l.startswith("# CLIPBOT_DATA_DIR="))
    env_file = tmp_path / ".env"
    env_file.write_text(line.removeprefix("# ") + "\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CLIPBOT_DATA_DIR", raising=False)
    monkeypatch.setenv("CLIPBOT_MODEL_CACHE", "~/weights")
    s = Settings(_env_file=env_file)
    assert s.data_dir == tmp_path / "home" / ".local" / "share" / "clipbot"
    assert s.models_dir == tmp_path / "home" / "weights"
    assert Settings(_env_file=None, data_dir="~/x").data_dir == tmp_path / "home" / "x"


def test_broken_plugin_is_skipped_and_reported(tmp_path, monkeypatch):
    broken = types.ModuleType("broken_plugin")
    monkeypatch.setitem(sys.modules, "broken_plugin", broken)
    pm = build_plugin_manager(make_settings(tmp_path, extra_plugins=["no_such_module_xyz", "broken_plugin"]))
    assert "no_such_module_xyz" in pm.clipbot_errors
    assert "ModuleNotFoundError" in pm.clipbot_errors["no_such_module_xyz"]
    assert pm.has_plugin("whatis")  # the rest still loaded


def test_a_plugin_with_an_async_hook_is_refused_with_one_line(tmp_path, monkeypatch, caplog):
    eager = types.ModuleType("eager_plugin")

    @hookspecs.hookimpl
    async def clipbot_image_posted(app, event):  # pluggy would call it and never await it
        raise AssertionError("never runs")

    eager.clipbot_image_posted = clipbot_image_posted
    monkeypatch.setitem(sys.modules, "eager_plugin", eager)
    with caplog.at_level("ERROR", logger="bot.plugins"):
        pm = build_plugin_manager(make_settings(tmp_path, extra_plugins=["eager_plugin"]))
    assert not pm.has_plugin("eager_plugin")
    assert "clipbot_image_posted is `async def`" in pm.clipbot_errors["eager_plugin"]
    lines = [r.getMessage() for r in caplog.records if "eager_plugin" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and not caplog.records[-1].exc_info
    assert pm.has_plugin("whatis")


def test_light_modules_import_without_torch():
    code = (
        "import sys, bot.cli, bot.plugins, bot.dispatch, bot.adapters.local, engine.app, engine.images, "
        "engine.worker, plugins.whatis, bot.builtin, plugins.search, bot.adapters.local.channel\n"
        "from bot.config import Settings\n"
        "from bot.plugins import build_plugin_manager\n"
        "pm = build_plugin_manager(Settings(_env_file=None))\n"
        "[s for ss in pm.hook.clipbot_commands() for s in ss]\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'taming', 'torchvision') if m in sys.modules)\n"
        "print(','.join(heavy) or 'clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "clean"


def test_env_example_lists_every_setting(tmp_path):
    from bot.config import env_prefix
    from bot.plugins import plugin_settings

    example = (ROOT / ".env.example").read_text()
    fields = [("CLIPBOT_", name, field) for name, field in Settings.model_fields.items()]
    for plugin, values in plugin_settings(build_plugin_manager(make_settings(tmp_path))).items():
        fields += [(env_prefix(plugin), name, field) for name, field in type(values).model_fields.items()]
    from bot.adapters.registry import BUILTIN_ADAPTERS, load_adapter

    for adapter in map(load_adapter, BUILTIN_ADAPTERS):
        fields += [(env_prefix(adapter.name), name, field) for name, field in adapter.settings_class.model_fields.items()]
    assert any(prefix == "CLIPBOT_SLACK_" for prefix, _, _ in fields)
    assert any(prefix == "CLIPBOT_WHATIS_" for prefix, _, _ in fields)
    for prefix, name, field in fields:
        alias = field.validation_alias  # e.g. DISCORD_TOKEN, SLACK_BOT_TOKEN: the platform's own variable name
        line = f"{alias.choices[0] if alias is not None else prefix + name.upper()}="
        assert line in example, f".env.example lacks {line}"
        assert field.description, f"{prefix}{name.upper()} needs a description"


def test_hook_clipbot_settings(tmp_path, monkeypatch):
    from bot.plugins import plugin_settings

    monkeypatch.setenv("CLIPBOT_WHATIS_TOP", "7")
    loaded = plugin_settings(build_plugin_manager(make_settings(tmp_path)))
    assert loaded["whatis"].top == 7 and loaded["whatis"].max_labels == 1000
    monkeypatch.setenv("CLIPBOT_WHATIS_TOP", "lots")
    from engine.errors import UserError

    with pytest.raises(UserError, match="CLIPBOT_WHATIS_TOP"):
        plugin_settings(build_plugin_manager(make_settings(tmp_path)))


def test_hook_clipbot_queues(tmp_path):
    from bot.plugins import declared_queues
    from engine.tasks import Queue

    queues = declared_queues(build_plugin_manager(make_settings(tmp_path)))
    assert {"gpu", "io"} <= set(queues) and all(isinstance(q, Queue) for q in queues.values())
    with pytest.raises(ValueError):
        Queue("Not A Name")


class _Recorder:
    """A plugin that records the adapter events it is told about."""

    def __init__(self):
        self.seen = []

    @hookspecs.hookimpl
    def clipbot_image_posted(self, app, event):
        self.seen.append(("posted", event.message_id, app.engine.blobs.get(event.attachments[0].key)))

    @hookspecs.hookimpl
    def clipbot_message_deleted(self, app, event):
        self.seen.append(("deleted", event.message_id, event.source_ids))

    @hookspecs.hookimpl
    def clipbot_channel_removed(self, app, event):
        self.seen.append(("removed", event.channel_id))

    @hookspecs.hookimpl
    def clipbot_startup(self, app):
        self.seen.append(("startup", sorted(app.commands)))


class _Broken:
    @hookspecs.hookimpl
    def clipbot_image_posted(self, app, event):
        raise RuntimeError("this plugin is broken")


def _events_app(tmp_path):
    from bot.app import open_app

    return open_app(make_settings(tmp_path, plugins=["help"]), start_worker=False)


def test_hook_clipbot_image_posted(tmp_path):
    import asyncio

    from bot.commands import Attachment
    from bot.events import ImagePosted

    recorder = _Recorder()
    with _events_app(tmp_path) as app:
        app.pm.register(_Broken(), name="broken")  # registered last, so pluggy calls it first
        app.pm.register(recorder, name="recorder")
        key = app.engine.blobs.put(b"picture bytes")
        event = ImagePosted(platform="local", space_id="s", channel_id="c", message_id="m1", author_id="u",
                            posted_at=0.0, permalink="", attachments=(Attachment(key, "a.png", "image/png", 13),))
        asyncio.run(app.image_posted(event))
    assert recorder.seen == [("posted", "m1", b"picture bytes")]  # the broken plugin did not stop it


def test_hook_clipbot_message_deleted(tmp_path):
    import asyncio

    from bot.events import MessageDeleted

    recorder = _Recorder()
    with _events_app(tmp_path) as app:
        app.pm.register(recorder, name="recorder")
        asyncio.run(app.message_deleted(MessageDeleted("slack", "T1", "C1", "m2", source_ids=("F1",))))
    assert recorder.seen == [("deleted", "m2", ("F1",))]


def test_hook_clipbot_channel_removed(tmp_path):
    import asyncio

    from bot.events import ChannelRemoved

    recorder = _Recorder()
    with _events_app(tmp_path) as app:
        app.pm.register(recorder, name="recorder")
        asyncio.run(app.channel_removed(ChannelRemoved("discord", "G1", "C9")))
    assert recorder.seen == [("removed", "C9")]


def test_hook_clipbot_startup(tmp_path):
    import asyncio

    recorder = _Recorder()
    with _events_app(tmp_path) as app:
        app.pm.register(recorder, name="recorder")
        asyncio.run(app.startup())
    assert recorder.seen == [("startup", ["cancel", "help", "queue", "quota"])]
