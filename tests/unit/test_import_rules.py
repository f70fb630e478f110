"""The house's import rules, read from the source with `ast` (nothing is imported).

- No import loop among bot/ engine/ plugins/ modules (module-level imports; those under
  `if TYPE_CHECKING:` are for annotations only and do not count).
- No module under plugins/ imports redis, a chat SDK, an adapter, the local chat, or another
  plugin package (function-level imports count too): plugins reach all of that through the
  engine face and the App.
- No plugin reaches past the engine face: no `app.engine` (the whole Engine, for bot/ only), no
  `._engine`, `.book`, `.celery` or `.redis` (main broke this in search and /imagine).
- engine/ imports nothing from bot/ or plugins/.
- bot/ never imports torch, open_clip or taming at module level.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

ROOMS = ("bot", "engine", "plugins")
_PLUGIN_FORBIDDEN = ("redis", "discord", "slack_bolt", "slack_sdk", "aiohttp", "bot.adapters", "bot.localchat")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for room in ROOMS for p in sorted((ROOT / room).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = MODULES.get(module, Path()).name == "__init__.py"
    base = package if is_package else package[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, *, module_level_only: bool) -> set[str]:
    """Dotted names `module` imports (`from a import b` gives a and, when a module, a.b)."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                if not module_level_only:
                    visit(child, top)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(module, child)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names if f"{base}.{alias.name}" in MODULES)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                if not module_level_only:
                    visit(child, False)
            else:
                visit(child, top)

    visit(tree, True)
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _plugin_package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _loaded_with(name: str) -> list[str]:
    """`a.b.c` also runs `a` and `a.b` (their __init__): the project modules an import executes."""
    parts = name.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in MODULES]


def _cycle() -> list[str] | None:
    graph = {m: sorted({t for name in _imports(m, module_level_only=True) for t in _loaded_with(name)} - {m})
             for m in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in graph[node]:
            # a package's own submodules importing their __init__ is how packages work, not a loop
            if _within(nxt, node) or _within(node, nxt):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for module in MODULES:
        if module not in state and (found := walk(module)):
            return found
    return None


def test_the_rules_see_every_room():
    assert {"bot.app", "engine.app", "plugins.search", "plugins.search.tasks"} <= set(MODULES)


def test_no_import_loop():
    loop = _cycle()
    assert loop is None, "import loop: " + " -> ".join(loop or [])


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("plugins.")])
def test_plugins_import_no_platform_redis_or_other_plugin(module):
    own = _plugin_package(module)
    for name in _imports(module, module_level_only=False):
        bad = [f for f in _PLUGIN_FORBIDDEN if _within(name, f)]
        assert not bad, f"{module} imports {name}: plugins reach it through the engine face or the App"
        if _within(name, "plugins") and name != "plugins":
            assert _plugin_package(name) == own, f"{module} imports another plugin ({name})"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("engine")])
def test_engine_imports_nothing_from_bot_or_plugins(module):
    for name in _imports(module, module_level_only=False):
        assert not (_within(name, "bot") or _within(name, "plugins")), f"{module} imports {name}"


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("bot")])
def test_bot_never_imports_model_libraries_at_module_level(module):
    for name in _imports(module, module_level_only=True):
        assert not any(_within(name, lib) for lib in ("torch", "open_clip", "taming")), f"{module} imports {name}"


_ENGINE_INSIDES = ("_engine", "book", "celery", "redis")  # what the face keeps from plugins


def _reaches_whole_engine(node: ast.Attribute) -> bool:
    """`app.engine` / `ctx.app.engine` (the whole Engine: bot/ only) or an engine inside."""
    if node.attr in _ENGINE_INSIDES:
        return True
    owner = node.value
    return node.attr == "engine" and (
        (isinstance(owner, ast.Name) and owner.id == "app") or (isinstance(owner, ast.Attribute) and owner.attr == "app"))


@pytest.mark.parametrize("module", [m for m in MODULES if m.startswith("plugins.")])
def test_plugins_use_the_engine_face_only(module):
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    reached = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and _reaches_whole_engine(n)]
    assert not reached, f"{module} reaches past the engine face (ctx.engine, app.face, job): {reached}"
