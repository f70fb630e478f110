"""Models for clipbot workers: a lazy per-process cache (`registry`) and device selection.

`engine.models.clip` is the only module that talks to open_clip; `engine.models.presets` holds tiny
seeded random models for tests and offline demos. Importing this package does not import torch.
"""

from engine.models.registry import ModelRegistry, registry, resolve_device

__all__ = ["ModelRegistry", "clip_for", "ocr_for", "registry", "resolve_device", "vqgan_for"]


def clip_for(settings):
    """The CLIP model the settings configure, loaded once per worker process (lazily)."""
    from engine.models.clip import get_clip

    return get_clip(settings.clip_model, device=settings.device, cache_dir=settings.models_dir,
                    backend=settings.clip_backend)


def ocr_for(settings):
    """The OCR reader the settings configure, loaded once per worker process (lazily); None when
    OCR is off (`CLIPBOT_OCR=false`). Raises ModelUnavailable when it cannot be loaded."""
    if not settings.ocr:
        return None
    from engine.models.ocr import get_ocr

    return get_ocr(settings.ocr_langs, settings.ocr_rec_model, settings.ocr_rec_keys)


def vqgan_for(settings, spec: str | None = None):
    """The VQGAN the settings configure (or `spec`), loaded once per worker process (lazily)."""
    from engine.models.vqgan import get_vqgan

    return get_vqgan(spec or settings.vqgan_model, device=settings.device, cache_dir=settings.models_dir)
