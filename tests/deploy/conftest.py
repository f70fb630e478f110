"""The compose file as a model the tests can change, and its plan as processes on this machine."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.deploy.fleet import load_compose, plan_fleet

COMPOSE = ROOT / "deploy" / "compose.yml"
# What an admin's .env holds for the fleet test: the tiny presets on the CPU, Slack in HTTP mode.
BASE_DOTENV = {"POSTGRES_PASSWORD": "fleet-test-password", "CLIPBOT_CLIP_MODEL": "tiny-test",
               "CLIPBOT_VQGAN_MODEL": "tiny-test", "CLIPBOT_DEVICE": "cpu", "CLIPBOT_LOG_LEVEL": "INFO",
               "CLIPBOT_WORKER_TORCH_THREADS": "1", "SLACK_BOT_TOKEN": "xoxb-placeholder",
               "SLACK_SIGNING_SECRET": "placeholder-secret", "CLIPBOT_SLACK_PUBLISH": "127.0.0.1:3000"}


def declared_queues() -> set[str]:
    from bot.config import Settings
    from bot.plugins import build_plugin_manager, declared_queues as declared

    return set(declared(build_plugin_manager(Settings(_env_file=None))))


def shim_dir(folder: Path) -> Path:
    """`clipbot`, `celery` and `python3` as the images have them on PATH, running this checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in (("clipbot", f"{sys.executable} -m bot.cli"), ("celery", f"{sys.executable} -m celery"),
                         ("python3", sys.executable)):
        path = folder / name
        path.write_text(f"#!/bin/sh\nexec {target} \"$@\"\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPBOT_", "SLACK_", "DISCORD_"))}
    env.update(PATH=f"{shim_dir(tmp_path / 'bin')}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def plan(model: dict, tmp_path: Path, dotenv: dict[str, str] | None = None, *, redis: str = "redis://127.0.0.1:6379/8",
         postgres: str = "postgresql://postgres:@/t?host=/nonexistent"):
    volumes = tmp_path / "volumes"
    plans = plan_fleet(model, dotenv=dotenv or BASE_DOTENV, externals={"redis": redis, "postgres": postgres},
                       volumes=volumes, compose_dir=COMPOSE.parent, base_env=base_env(tmp_path))
    return plans, volumes


@pytest.fixture
def compose_model() -> dict:
    return load_compose(COMPOSE)
