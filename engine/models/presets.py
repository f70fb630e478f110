"""Tiny seeded random CLIP models for tests and offline demos. Their outputs are MEANINGLESS.

A preset is an open_clip model config shipped in `engine/models/configs/` plus a seed. Building one
gives the same weights on every call and every machine (for a given torch version) and leaves the
caller's global RNG state untouched. Nothing here imports torch or open_clip at import time, so
listing `PRESETS` is cheap; the open_clip calls go through `engine.models.clip`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class _Preset:
    config: str  # file name in CONFIG_DIR; its stem is the open_clip architecture name
    seed: int
    description: str


_PRESETS = {
    "tiny-test": _Preset(
        config="tiny-test.json",
        seed=0,
        description="tiny random ViT CLIP (64-d, 64 px): meaningless outputs, for tests and offline demos",
    ),
}

PRESETS: dict[str, str] = {name: preset.description for name, preset in _PRESETS.items()}


def preset_config_path(name: str) -> Path:
    """The open_clip model-config JSON of preset `name` (KeyError if there is no such preset)."""
    return CONFIG_DIR / _PRESETS[name].config


def create_preset_clip(name: str) -> tuple[Any, Any, Any]:
    """Build preset `name` as (model, preprocess, tokenizer), on the CPU, with random weights."""
    from engine.models import clip  # deferred: clip imports this module

    arch = clip.register_model_config(preset_config_path(name))
    return create_seeded_clip(arch, _PRESETS[name].seed)


def create_seeded_clip(arch: str, seed: int = 0) -> tuple[Any, Any, Any]:
    """Build open_clip architecture `arch` with weights drawn from `seed` (meaningless outputs).

    The CPU generator is seeded inside `fork_rng`, so the caller's RNG state is restored after.
    """
    import torch

    from engine.models import clip

    with torch.random.fork_rng(devices=[]):  # devices=[]: don't touch (or initialise) CUDA
        torch.manual_seed(seed)
        return clip.build_clip(arch)
