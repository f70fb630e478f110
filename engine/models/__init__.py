"""Models for clipbot workers: a lazy per-process cache (`registry`) and device selection.

`engine.models.clip` is the only module that talks to open_clip; `engine.models.presets` holds tiny
seeded random models for tests and offline demos. Importing this package does not import torch.
"""

from engine.models.registry import ModelRegistry, registry, resolve_device

__all__ = ["ModelRegistry", "clip_for", "registry", "resolve_device", "vqgan_for"]


def clip_for(settings):
    """The CLIP model the settings configure, loaded once per worker process (lazily)."""
    from engine.models.clip import get_clip

    return get_clip(settings.clip_model, device=settings.device, cache_dir=settings.models_dir,
                    backend=settings.clip_backend)


def vqgan_for(settings, spec: str | None = None):
    """The VQGAN the settings configure (or `spec`), loaded once per worker process (lazily)."""
    from engine.models.vqgan import get_vqgan

    return get_vqgan(spec or settings.vqgan_model, device=settings.device, cache_dir=settings.models_dir)
