"""Tiny seeded random CLIP models for tests and offline demos. Their outputs are MEANINGLESS.

A preset is an open_clip model config shipped in `engine/models/configs/` plus a seed. This module
is plain data (no torch, no open_clip, no imports from the rest of clipbot), so listing `PRESETS` is
cheap; `engine.models.clip` builds a preset (same weights on every call and machine for a given
torch version, leaving the caller's RNG state untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    # The multilingual family's shape (a Hugging Face XLM-RoBERTa text tower, its kind of tokenizer),
    # tiny: text config and tokenizer are built offline (engine.models.hf_text) on first use.
    "tiny-multilingual": _Preset(
        config="tiny-multilingual.json",
        seed=0,
        description="tiny random ViT + XLM-RoBERTa CLIP (64-d, 64 px, a tokenizer trained offline on a few "
                    "languages): meaningless outputs, for tests and offline demos of multilingual models",
    ),
}

PRESETS: dict[str, str] = {name: preset.description for name, preset in _PRESETS.items()}
# What a missing-weights error adds (and the local chat's model line): how to try clipbot anyway.
OFFLINE_HINT = "to try clipbot offline, set CLIPBOT_CLIP_MODEL=tiny-test: a tiny random model, meaningless answers"


def preset_seed(name: str) -> int:
    """The seed preset `name`'s random weights are drawn from (KeyError if there is no such preset)."""
    return _PRESETS[name].seed


def preset_config_path(name: str) -> Path:
    """The open_clip model-config JSON of preset `name` (KeyError if there is no such preset)."""
    return CONFIG_DIR / _PRESETS[name].config
