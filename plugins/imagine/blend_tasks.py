"""/blend's quick task (heavy: CLIP): the pictures as CLIP embeddings, stored for the generation.

An attachment is decoded (the intake's limits) and embedded; a linked picture's embedding is the
one the search index holds for it under this CLIP model, found only through the requester's
place filter (`engine.index.Filter`, as /search builds it). Each embedding goes into the blob
store as float32 bytes for as long as a finished picture's state is kept, so the generation, a
resumed run and every later button read the same vectors.
"""

from __future__ import annotations

import io

import numpy as np

from engine.errors import UserError
from engine.images import decode_image
from engine.index import Filter, ImageIndex
from engine.models import clip_for
from engine.tasks import JobContext, task
from plugins.imagine.blend import PICTURES


@task(PICTURES, queue="gpu", inputs=("images",))  # the uploads go once embedded
def blend_pictures(job: JobContext, space: str, images: list, links: list, channels: list | None = None,
                   private: list | None = None) -> dict:
    clip = clip_for(job.settings)
    vectors = []
    if images:
        decoded = [decode_image(job.blobs.get(key), max_bytes=job.settings.max_image_bytes,
                                max_pixels=job.settings.max_image_pixels) for key in images]
        vectors += list(clip.encode_images(decoded).float().cpu().numpy())
    if links:
        # every private thread only for the operator (no channel list); otherwise only those named
        scopes = None if channels is None and private is None else frozenset(private or ())
        where = Filter(channels=None if channels is None else frozenset(channels), private_scopes=scopes)
        index = job.index()
        vectors += [_linked(index, clip.fingerprint, space, where, link) for link in links]
    ttl = job.plugin_settings("imagine").state_ttl
    return {"keys": [job.blobs.put(vector_bytes(v), ttl=ttl) for v in vectors], "model": clip.fingerprint}


def _linked(index: ImageIndex, model: str, space: str, where: Filter, link: dict) -> np.ndarray:
    """The embedding of the picture a message link names, where the requester may see it."""
    channel, message, text = str(link.get("channel_id") or ""), str(link.get("message_id") or ""), link.get("link")
    # On Discord a link may name a thread; the index files a thread's pictures under its parent.
    found = [o for o in index.occurrences(space, message) if channel in (o.channel_id, o.thread_id)]
    seen = [o for o in found if where.shows_place(o)]
    if not seen:
        # Decided from the link's channel alone, so it says nothing about what that channel holds.
        if where.channels is not None and channel not in where.channels and channel not in (where.private_scopes or ()):
            raise UserError(f"{text} is in a channel you can't see, so I can't blend its picture.")
        raise UserError(f"I have no indexed picture in the message {text} (it may have none, not be indexed "
                        "yet, or be gone).")
    vector = index.embedding(space, seen[0].content_hash, model)
    if vector is None:
        raise UserError(f"The picture of {text} is being re-indexed for a new model; try again in a while.")
    return np.asarray(vector, dtype=np.float32)


def vector_bytes(vector: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32).reshape(-1), allow_pickle=False)
    return buffer.getvalue()


def vector_of(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
