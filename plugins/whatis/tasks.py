"""/whatis engine task and label preparation (heavy: imports torch through the pipeline)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from PIL import Image

from engine.errors import UserError
from engine.images import decode_image
from engine.index import Filter
from engine.models import clip_for
from engine.models.clip import IMAGENET_CLASSNAMES
from engine.progress import BuildProgress, matrix_build_progress
from engine.tasks import JobContext, task
from plugins.whatis import IMAGENET, MAX_TOP, TASK, TEACH_TASK
from plugins.whatis import pipeline
from plugins.whatis.labels import MAX_EXAMPLES, check_labels, check_top
from plugins.whatis.results import Classification, Explained, Taught

if TYPE_CHECKING:
    from engine.settings import EngineSettings
    from plugins.whatis import WhatisSettings

@task(TASK, queue="gpu", inputs=("image",))  # the upload goes when the job ends
def classify(job: JobContext, image: str | None, labels: list[str] | None, top: int, explain: bool = False,
             keep: bool = False, picture: str | None = None, examples: dict[str, Any] | None = None) -> Classification:
    """Classify the image stored under blob key `image` (or a picture kept for a Where? button,
    `picture`) against `labels` (None: ImageNet-1k). `explain`: heat maps of the top labels;
    `keep`: keep the picture for a Where? button; `examples`: taught labels' example embeddings
    ({label: {"model", "vectors"}}, as /labels teach stored them)."""
    settings, config = job.settings, job.plugin_settings("whatis")
    # Checked again here, as the handlers do: a task may be submitted by any client.
    label_list = IMAGENET_CLASSNAMES if labels is None else check_labels(labels, max_labels=config.max_labels)
    top = check_top(top, max_top=MAX_TOP)
    clip = clip_for(settings)
    data = job.blobs.get(image or picture or "")
    shown = decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                         for_side=clip.image_size)
    what = f"{IMAGENET} labels" if labels is None else f"{len(label_list)} labels"
    shots = _examples(clip, label_list, examples)
    result = pipeline.classify(clip, shown, label_list, top=top, cache_dir=label_cache_dir(settings),
                               cache_bytes=label_cache_bytes(config), progress=matrix_build_progress(job, what),
                               examples=shots, text_weight=config.teach_text_weight,
                               threshold=config.threshold, margin=config.unsure_margin)
    if explain:
        result = _explained(job, clip, shown, label_list, shots, result, config)
    if keep and image and config.where_keep_s > 0:
        result = dataclasses.replace(result, picture=job.blobs.put(_kept(shown), ttl=config.where_keep_s))
    return result


def _examples(clip: Any, labels: Any, examples: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """Taught labels' example embeddings by their label text, those of this model only (examples
    embedded by another model are left out: teach them again)."""
    by_name = {label.casefold(): label for label in labels}
    out = {}
    for name, taught in (examples or {}).items():
        label = by_name.get(str(name).casefold())
        if label is None or not isinstance(taught, dict) or taught.get("model") != clip.fingerprint:
            continue
        vectors = [pipeline.decode_vector(v) for v in taught.get("vectors") or ()][:MAX_EXAMPLES]
        if vectors and all(v.shape == (clip.embed_dim,) for v in vectors):
            out[label] = torch.stack(vectors)
    return out


def _explained(job: JobContext, clip: Any, shown: Image.Image, labels: Any, shots: dict,
               result: Classification, config: "WhatisSettings") -> Classification:
    matrix = pipeline.scoring_matrix(clip, labels, cache_dir=label_cache_dir(job.settings),
                                     cache_bytes=label_cache_bytes(config), examples=shots,
                                     text_weight=config.teach_text_weight)
    top = [item.label for item in result.labels[: config.explain_top]]
    method, overlays = pipeline.explain(clip, shown, matrix, list(labels), top)
    maps = tuple(Explained(label, job.blobs.put(_png(picture), ttl=job.settings.blob_ttl)) for label, picture in overlays)
    return dataclasses.replace(result, explain=maps, method=method)


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _kept(picture: Image.Image, side: int = 512) -> bytes:
    """The picture for a later Where?, at most `side` pixels a side, as a JPEG (small in Redis)."""
    small = picture.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=90)
    return out.getvalue()


@task(TEACH_TASK, queue="gpu", inputs=("images",))
def teach(job: JobContext, images: list[str], messages: list[dict] | None = None, space: str = "",
          channels: list[str] | None = None, private: list[str] | None = None) -> Taught:
    """Embed a taught label's examples: uploads (`images`, blob keys) and indexed pictures of
    `messages` ({"channel_id", "message_id"}) in `space` that `channels`/`private` may read
    (None: any, the operator's CLI)."""
    settings = job.settings
    clip = clip_for(settings)
    vectors, skipped = [], []
    for key in images:
        try:
            picture = decode_image(job.blobs.get(key), max_bytes=settings.max_image_bytes,
                                   max_pixels=settings.max_image_pixels, for_side=clip.image_size)
        except UserError as exc:
            skipped.append(str(exc))
            continue
        vectors.append(clip.encode_images([picture])[0])
    if messages:
        where = Filter(channels=None if channels is None else frozenset(channels),
                       private_scopes=None if private is None else frozenset(private))
        found, missing = _indexed(job.index(), clip, space, messages, where)
        vectors += found
        skipped += missing
    if not 1 <= len(vectors) <= MAX_EXAMPLES:
        reason = f" ({'; '.join(skipped)})" if skipped else ""
        raise UserError(f"Teaching needs 1 to {MAX_EXAMPLES} example pictures I can read; I got {len(vectors)}{reason}.")
    return Taught(model=clip.fingerprint, vectors=tuple(pipeline.encode_vector(v) for v in vectors),
                  skipped=tuple(skipped))


def _indexed(index: Any, clip: Any, space: str, messages: list[dict], where: Filter) -> tuple[list, list[str]]:
    """The index's embeddings of the pictures of `messages` that `where` allows; why others are not."""
    vectors, skipped = [], []
    for message in messages:
        message_id, channel = str(message.get("message_id") or ""), message.get("channel_id") or None
        found = [o for o in index.occurrences(space, message_id, channel) if where.shows_place(o)]
        if not found:  # the same words whether it does not exist or is not readable: nothing leaks
            skipped.append(f"no picture from message {message_id} in a channel you can read")
        for occurrence in found:
            vector = index.embedding(space, occurrence.content_hash, clip.fingerprint)
            if vector is None:
                skipped.append(f"message {message_id}'s picture is being re-indexed for a new model")
            else:
                vectors.append(torch.from_numpy(vector.astype("float32")))
    return vectors, skipped


def prepare_imagenet_labels(settings: "EngineSettings", config: "WhatisSettings", report: Callable[[str], object] | None = None) -> None:
    """Compute the configured model's ImageNet-1k label matrix (and the background's embeddings,
    for "not sure" answers) into the disk cache, unless they are there already, so the first
    /whatis answers at once. `config`: the whatis plugin settings;
    `report(message)` gets progress lines."""
    sink = (lambda done, total, message: report(message)) if report else None
    pipeline.background_features(clip_for(settings), label_cache_dir(settings))
    pipeline.label_matrix(clip_for(settings), IMAGENET_CLASSNAMES, cache_dir=label_cache_dir(settings),
                          cache_bytes=label_cache_bytes(config),
                          progress=BuildProgress(f"{IMAGENET} labels", sink) if sink else None)


def label_cache_dir(settings: "EngineSettings") -> Path:
    return settings.data_dir / "cache" / "labels"


def label_cache_bytes(config: "WhatisSettings") -> int:
    return int(config.label_cache_mb) * 1024 * 1024
