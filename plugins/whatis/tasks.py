"""/whatis engine task and label preparation (heavy: imports torch through the pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

from engine.images import decode_image
from engine.models import clip_for
from engine.models.clip import IMAGENET_CLASSNAMES
from engine.progress import BuildProgress, matrix_build_progress
from engine.tasks import JobContext, task
from plugins.whatis import IMAGENET, MAX_TOP, TASK
from plugins.whatis import pipeline
from plugins.whatis.labels import check_labels, check_top
from plugins.whatis.results import Classification

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from plugins.whatis import WhatisSettings

@task(TASK, queue="gpu", inputs=("image",))  # the upload goes when the job ends
def classify(job: JobContext, image: str, labels: list[str] | None, top: int) -> Classification:
    """Classify the image stored under blob key `image` against `labels` (None: ImageNet-1k)."""
    settings, config = job.settings, job.plugin_settings("whatis")
    # Checked again here, as the handlers do: a task may be submitted by any client.
    label_list = IMAGENET_CLASSNAMES if labels is None else check_labels(labels, max_labels=config.max_labels)
    top = check_top(top, max_top=MAX_TOP)
    clip = clip_for(settings)
    picture = decode_image(job.blobs.get(image), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels, for_side=clip.image_size)
    what = f"{IMAGENET} labels" if labels is None else f"{len(label_list)} labels"
    return pipeline.classify(clip, picture, label_list, top=top, cache_dir=label_cache_dir(settings),
                             cache_bytes=label_cache_bytes(config), progress=matrix_build_progress(job, what))


def prepare_imagenet_labels(settings: "EngineSettings", config: "WhatisSettings", report: Callable[[str], object] | None = None) -> None:
    """Compute the configured model's ImageNet-1k label matrix into the disk cache, unless it is
    there already, so the first /whatis answers at once. `config`: the whatis plugin settings;
    `report(message)` gets progress lines."""
    sink = (lambda done, total, message: report(message)) if report else None
    pipeline.label_matrix(clip_for(settings), IMAGENET_CLASSNAMES, cache_dir=label_cache_dir(settings),
                          cache_bytes=label_cache_bytes(config),
                          progress=BuildProgress(f"{IMAGENET} labels", sink) if sink else None)


def label_cache_dir(settings: "EngineSettings") -> Path:
    return settings.data_dir / "cache" / "labels"


def label_cache_bytes(config: "WhatisSettings") -> int:
    return int(config.label_cache_mb) * 1024 * 1024
