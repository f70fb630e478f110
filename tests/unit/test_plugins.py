"""The plugin system and its meta-tests: every hook is documented and tested."""

import inspect
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bot import hookspecs
from bot.commands import CommandSpec
from bot.config import Settings
from bot.plugins import BUILTIN_PLUGINS, build_plugin_manager
from tests.conftest import ROOT, make_settings

HOOKS = sorted(name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("clipbot_"))


def test_hooks_exist():
    assert HOOKS == ["clipbot_commands", "clipbot_task_modules"]


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


def test_broken_plugin_is_skipped_and_reported(tmp_path, monkeypatch):
    broken = types.ModuleType("broken_plugin")
    monkeypatch.setitem(sys.modules, "broken_plugin", broken)
    pm = build_plugin_manager(make_settings(tmp_path, extra_plugins=["no_such_module_xyz", "broken_plugin"]))
    assert "no_such_module_xyz" in pm.clipbot_errors
    assert "ModuleNotFoundError" in pm.clipbot_errors["no_such_module_xyz"]
    assert pm.has_plugin("whatis")  # the rest still loaded


def test_light_modules_import_without_torch():
    code = (
        "import sys, bot.cli, bot.plugins, bot.dispatch, bot.adapters.local, engine.app, engine.images, "
        "engine.worker, plugins.whatis, bot.builtin\n"
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


def test_env_example_lists_every_setting():
    example = (ROOT / ".env.example").read_text()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias  # e.g. SLACK_BOT_TOKEN: the platform's own variable name
        env = alias.choices[0] if alias is not None else f"CLIPBOT_{name.upper()}"
        line = f"{env}="
        assert line in example, f".env.example lacks {line}"
        assert field.description, f"Settings.{name} needs a description"
