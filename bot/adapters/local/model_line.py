"""What the local chat says at start about the model: which CLIP is configured, and whether
its weights are on this machine (a file and cache check: no model is built)."""

from __future__ import annotations

from typing import Any

from engine.errors import ModelUnavailable
from engine.models.presets import OFFLINE_HINT, PRESETS


def model_line(settings: Any) -> str:
    """One line about `settings.clip_model` (blocking: it may look at the disk)."""
    spec = settings.clip_model.strip()
    if not settings.embedded:
        return f"model: {spec} (the workers load it)"
    if spec in PRESETS:
        return f"model: {spec} (built in, nothing to download: {PRESETS[spec]})"
    # The embedded worker imported open_clip already: looking up its cache file costs nothing more.
    from engine.models.clip import weights_here

    try:
        here = weights_here(spec, cache_dir=settings.models_dir)
    except ModelUnavailable as exc:
        return f"model: {spec} (not usable: {exc})"
    if here:
        return f"model: {spec} (weights here)"
    return f"model: {spec} (weights not here: `clipbot models pull` downloads them; {OFFLINE_HINT})"
