"""Packaging: the bot process installs light (no torch); extras add workers and chat platforms;
`.[dev]` (README's one install command) still installs everything."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from packaging.requirements import Requirement

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HEAVY = {"torch", "torchvision", "open-clip-torch", "taming-transformers-rom1504", "pytorch-lightning"}


def names(requirements):
    return {re.sub(r"[-_.]+", "-", Requirement(r).name).lower() for r in requirements}


def expand(extra, seen=()):
    """Every requirement an extra brings, following `clipbot[...]` self-references."""
    found = []
    for text in PROJECT["optional-dependencies"][extra]:
        req = Requirement(text)
        if req.name == "clipbot":
            for inner in sorted(req.extras - set(seen)):
                found += expand(inner, (*seen, extra))
        else:
            found.append(text)
    return found


def test_core_is_light_and_extras_carry_the_rest():
    assert not names(PROJECT["dependencies"]) & (HEAVY | {"discord-py", "slack-bolt"})
    assert names(expand("worker")) >= HEAVY | {"einops", "setuptools"}
    assert "torch==2.14.1" in PROJECT["optional-dependencies"]["worker"]
    assert "torchvision==0.29.1" in PROJECT["optional-dependencies"]["worker"]
    assert names(expand("discord")) == {"discord-py"} and names(expand("slack")) == {"slack-bolt", "aiohttp"}
    assert names(expand("all")) == names(expand("worker") + expand("discord") + expand("slack"))
    assert names(expand("dev")) >= names(expand("all")) | {"pytest", "pytest-timeout", "hypothesis"}


def _closure(requirements):
    """Installed distributions the requirements pull in, transitively (markers for this Python)."""
    todo, seen = list(requirements), set()
    while todo:
        req = Requirement(todo.pop()) if isinstance(todo[-1], str) else todo.pop()
        key = re.sub(r"[-_.]+", "-", req.name).lower()
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or ():
            inner = Requirement(text)
            if inner.marker is None or any(inner.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(inner)
    return seen


_HIDE_AND_IMPORT = """
import importlib.abc, sys
blocked = set(sys.argv[1].split())

class Hide(importlib.abc.MetaPathFinder):  # as if only the core dependencies were installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not a core dependency)", name=name)
        return None

sys.meta_path.insert(0, Hide())
import asyncio, bot.app, bot.cli, bot.adapters.local, bot.markup, bot.options, engine.app, engine.images
import engine.models.presets, plugins.whatis
from bot.config import Settings
from bot.commands import Request
settings = Settings(_env_file=None, data_dir=sys.argv[2])
with bot.app.open_app(settings, start_worker=False) as dispatcher:
    async def main():
        return [r async for r in dispatcher.handle(Request("help", {}, "u", "c"))]
    reply = asyncio.run(main())[-1]
assert not reply.error and "/whatis" in reply.text, reply.text
heavy = sorted(m for m in ("torch", "open_clip", "discord", "slack_bolt") if m in sys.modules)
print(",".join(heavy) or "clean")
"""


def test_bot_side_runs_with_only_core_dependencies(tmp_path):
    """The bot side (CLI, dispatch, plugins' light halves) imports and answers with every
    distribution outside the core dependencies hidden."""
    allowed = _closure(PROJECT["dependencies"]) | {"clipbot", "setuptools"}  # setuptools: its .pth hook
    providers = metadata.packages_distributions()
    blocked = {module for module, dists in providers.items()
               if not {re.sub(r"[-_.]+", "-", d).lower() for d in dists} & allowed}
    assert {"torch", "open_clip", "discord", "slack_bolt"} <= blocked
    out = subprocess.run([sys.executable, "-c", _HIDE_AND_IMPORT, " ".join(sorted(blocked)), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "clean", out.stderr


def test_docker_images():
    bot = (ROOT / "deploy" / "Dockerfile.bot").read_text()
    worker = (ROOT / "deploy" / "Dockerfile.worker").read_text()
    assert "worker" not in re.findall(r"pip install[^\n]*", bot)[0] and "torch" not in bot.split("FROM", 1)[1]
    assert re.search(r'"\.\[worker[,\]]', re.findall(r"pip install[^\n]*", worker)[0])
    assert "worker" not in re.findall(r"ARG EXTRAS=[^\n]*", bot)[0]  # the bot image's extras: no torch
