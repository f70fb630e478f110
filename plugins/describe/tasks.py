"""/describe engine task (heavy: imports torch through the pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import UserError
from engine.images import decode_image
from engine.models import clip_for
from engine.progress import matrix_build_progress
from engine.tasks import JobContext, task
from plugins.describe import MAX_PER_KIND, TASK
from plugins.describe import pipeline
from plugins.describe.results import Description
from plugins.describe.vocab import load_vocabulary

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from plugins.describe import DescribeSettings

_CACHE_BYTES = 64 * 1024 * 1024  # a vocabulary matrix is ~0.5 MB (ViT-B/32): room for many models and edits


@task(TASK, queue="gpu", inputs=("image",))  # the upload goes when the job ends
def describe(job: JobContext, image: str, per_kind: int) -> Description:
    """Describe the image stored under blob key `image`: four prompts and each kind's best terms."""
    settings, config = job.settings, job.plugin_settings("describe")
    if isinstance(per_kind, bool) or not isinstance(per_kind, int) or not 1 <= per_kind <= MAX_PER_KIND:
        raise UserError(f"terms must be between 1 and {MAX_PER_KIND}.")  # checked again: any client may submit
    clip = clip_for(settings)
    picture = decode_image(job.blobs.get(image), max_bytes=settings.max_image_bytes,
                           max_pixels=settings.max_image_pixels, for_side=clip.image_size)
    return pipeline.describe(clip, picture, load_vocabulary(vocabulary_dir(settings, config)), per_kind=per_kind,
                             cache_dir=settings.data_dir / "cache" / "describe", cache_bytes=_CACHE_BYTES,
                             progress=matrix_build_progress(job, "the vocabulary"))


def vocabulary_dir(settings: "EngineSettings", config: "DescribeSettings") -> Path:
    """Where admins' extra terms live: the setting, or `<data dir>/describe/vocab`."""
    return Path(config.vocab_dir) if config.vocab_dir else settings.data_dir / "describe" / "vocab"
