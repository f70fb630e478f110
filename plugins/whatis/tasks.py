"""/whatis engine task (heavy: imports torch through the pipeline)."""

from __future__ import annotations

from engine.images import decode_image
from engine.models import clip_for
from engine.models.clip import IMAGENET_CLASSNAMES
from engine.tasks import JobContext, task
from plugins.whatis import TASK
from plugins.whatis import pipeline


@task(TASK, queue="gpu")
def classify(job: JobContext, image: str, labels: list[str] | None, top: int) -> dict:
    settings = job.settings
    picture = decode_image(job.blobs.get(image), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels)
    clip = clip_for(settings)
    return pipeline.classify(clip, picture, labels or IMAGENET_CLASSNAMES, top=top,
                             cache_dir=settings.data_dir / "cache" / "labels")
