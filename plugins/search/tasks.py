"""Engine tasks of /search (heavy: CLIP through the pipeline). All run on the quick `gpu` queue.

The worker process's ImageIndex comes from the engine (`job.index()`: one handle per process,
opened lazily after a fork).
Indexing is drained in batches: one job embeds up to `drain_batches` × `batch_size` queued
pictures, then re-queues itself so waiting queries get their turn. The same job reads the text
on new pictures (OCR) where the space has it on (`CLIPBOT_OCR`, `/index ocr on|off`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

import numpy as np

from engine.blobs import discard
from engine.errors import ModelUnavailable, UserError
from engine.index import Filter, ImageIndex
from engine.index.text import query_words, tokens
from engine.models import clip_for, ocr_for
from engine.models.clip import ClipModel
from engine.observe import metrics
from engine.tasks import JobContext, task
from plugins.search import (
    DRAIN, INDEX_NOW, MAX_TOP, PENDING, QUERY, REEMBED, REMOVE, STATS, UNAPPLIED, decode_vector, encode_vector, is_gone,
    ocr_enabled)
from plugins.search import pipeline, relevance
from plugins.search.query import MAX_TERM_CHARS, MAX_TERMS
from plugins.search.results import Drained, Hit, Indexed, IndexStats, Reembedded, Removed, SearchPage
from plugins.search.sheet import contact_sheet

log = logging.getLogger(__name__)

_MODEL_KEY = "clipbot:search:model"
_REEMBEDDING = "clipbot:search:reembedding"
_EXPIRED_AT = "clipbot:search:expired-at"
_VECTOR = "clipbot:search:vector:"
VECTOR_TTL = 86400
SHEET_TTL = 3600
_ocr_warned: set[str] = set()


def _image_limits(job: JobContext) -> dict:
    return {"max_bytes": job.settings.max_image_bytes, "max_pixels": job.settings.max_image_pixels}


def _reading(job: JobContext) -> dict:
    """The OCR arguments of the pipeline: this process's reader (None when OCR is off or cannot
    load: pictures are still indexed, without their text) and which spaces want it."""
    try:
        reader = ocr_for(job.settings)
    except ModelUnavailable as exc:
        if str(exc) not in _ocr_warned:  # once per process and reason, not once per batch
            _ocr_warned.add(str(exc))
            log.warning("indexing pictures without reading their text: %s", exc)
        reader = None
    return {"ocr": reader, "ocr_in": lambda space: ocr_enabled(job.store, space)}


# ---- indexing --------------------------------------------------------------------------------------
@task(DRAIN, queue="gpu")
def drain(job: JobContext) -> Drained:
    settings = job.plugin_settings("search")
    queue = job.pending(PENDING)
    clip, index = clip_for(job.settings), job.index()
    _check_model(job, clip)
    _maybe_expire(job, index, settings.retention_days)
    _apply_unapplied(job, index)
    totals = Drained()
    while True:
        if totals.batches >= settings.drain_batches and queue.size():
            job.submit(DRAIN, {}, queue="gpu")  # keeps the lease: the next job carries on
            break
        batch = queue.peek(settings.batch_size)
        if not batch:
            if queue.release():
                continue
            break
        live = [item for item in batch if not is_gone(job.store, item)]
        result = pipeline.index_items(index, clip, live, job.blobs.get, **_image_limits(job), **_reading(job))
        queue.ack(len(batch))
        _forget_uploads(job, batch)  # indexed (or skipped) for good: the bytes need not wait out the TTL
        totals = Drained(indexed=totals.indexed + result.indexed, embedded=totals.embedded + result.embedded,
                         skipped=totals.skipped + result.skipped, batches=totals.batches + 1,
                         read=totals.read + result.read)
    return totals


@task(INDEX_NOW, queue="gpu")
def index_now(job: JobContext, items: list) -> Indexed:
    """Index these pictures now, in one batch (`/index add`, `clipbot index add`)."""
    if not isinstance(items, list) or not items or len(items) > 1000:
        raise UserError("Give between 1 and 1000 pictures to index.")
    required = ("space_id", "channel_id", "message_id", "key")
    if any(not isinstance(i, dict) or any(not isinstance(i.get(k), str) for k in required) for i in items):
        raise UserError("Each picture to index needs a space, a channel, a message id and an upload.")
    clip, index = clip_for(job.settings), job.index()
    _check_model(job, clip)
    result = pipeline.index_items(index, clip, items, job.blobs.get, **_image_limits(job), **_reading(job))
    _forget_uploads(job, items)
    return result


def _forget_uploads(job: JobContext, items: list[dict]) -> None:
    """Delete the blobs of pictures that are in the index now (after the work, never before: a
    crash in between leaves them to their TTL, not lost)."""
    discard(job.blobs, [item["key"] for item in items if isinstance(item.get("key"), str)], "indexed")


@task(REMOVE, queue="gpu")
def remove(job: JobContext, space: str, message_id: str | None = None, channel_id: str | None = None,
           source_ids: list | None = None, whole_channel: bool = False) -> Removed:
    index = job.index()
    _apply_unapplied(job, index)
    return _remove(index, space, message_id, channel_id, source_ids, whole_channel)


def _apply_unapplied(job: JobContext, index: ImageIndex) -> None:
    """Removals that arrived while no worker was online."""
    waiting = job.store.get(UNAPPLIED)
    if waiting:
        job.store.delete(UNAPPLIED)
        for removal in waiting:
            _remove(index, **{"message_id": None, "channel_id": None, "source_ids": None, "whole_channel": False,
                              **removal})


def _remove(index: ImageIndex, space: str, message_id: str | None, channel_id: str | None,
            source_ids: list | None, whole_channel: bool) -> Removed:
    if whole_channel:
        if not channel_id:
            raise UserError("Which channel's pictures should go?")
        return Removed(index.remove_channel(space, channel_id))
    if not message_id:
        raise UserError("Which message's pictures should go?")
    return Removed(index.remove_message(space, message_id, channel_id=channel_id,
                                        source_ids=tuple(source_ids or ())))


@task(STATS, queue="gpu")
def stats(job: JobContext, space: str) -> IndexStats:
    clip, index = clip_for(job.settings), job.index()
    s = index.stats(space, clip.fingerprint)
    metrics().index_images.labels(space).set(s.embeddings)  # counted here, where it is cheap
    return IndexStats(model=clip.spec, embeddings=s.embeddings, occurrences=s.occurrences, channels=s.channels,
                      stale=s.stale, by_channel=dict(s.by_channel))


@task(REEMBED, queue="gpu")
def reembed(job: JobContext) -> Reembedded:
    """Re-embed every picture whose embedding comes from another model, batch by batch."""
    clip, index = clip_for(job.settings), job.index()
    batch = job.plugin_settings("search").batch_size
    job.store.set(_REEMBEDDING, clip.fingerprint, ttl=3600)
    done = 0
    try:
        while True:
            job.check_cancelled()
            n = pipeline.reembed(index, clip, batch, max_pixels=job.settings.max_image_pixels, **_reading(job))
            if not n:
                break
            done += n
            job.progress(done, done + batch, message=f"re-embedded {done} pictures for {clip.spec}")
    finally:
        job.store.delete(_REEMBEDDING)
    return Reembedded(done)


def _check_model(job: JobContext, clip: ClipModel) -> None:
    """The first job after a model change starts re-embedding the index in the background."""
    store = job.store
    if store.get(_MODEL_KEY) == clip.fingerprint:
        return
    previous = store.get(_MODEL_KEY)
    store.set(_MODEL_KEY, clip.fingerprint)
    if previous is not None:
        log.info("CLIP model changed (%s -> %s): re-embedding the index", previous, clip.fingerprint)
        job.submit(REEMBED, {}, queue="gpu")


def _maybe_expire(job: JobContext, index: ImageIndex, retention_days: float) -> None:
    if retention_days <= 0:
        return
    store, now = job.store, time.time()
    if now - float(store.get(_EXPIRED_AT) or 0) < 3600:
        return
    store.set(_EXPIRED_AT, now)
    gone = index.expire(now - retention_days * 86400)
    if gone:
        log.info("retention: forgot %d pictures posted over %s days ago", gone, retention_days)


# ---- querying --------------------------------------------------------------------------------------
@task(QUERY, queue="gpu", inputs=("image",))  # a query picture goes when the job ends ("More" reuses the vector)
def query(job: JobContext, space: str, k: int, offset: int = 0, terms: list | None = None,
          image: str | None = None, similar: dict | None = None, vector_ref: str | None = None,
          exclude: str | None = None, channels: list | None = None, authors: list | None = None,
          after: float | None = None, before: float | None = None, private: list | None = None,
          text: list | None = None, calibrate: bool = False, expand: dict | None = None) -> SearchPage:
    _check_query(k, offset, terms, channels, authors, private, text)
    if any(v is not None and not isinstance(v, dict) for v in (similar, expand)):
        raise UserError("Name the picture as CHANNEL/MESSAGE.")
    settings = job.plugin_settings("search")
    clip, index = clip_for(job.settings), job.index()
    _check_model(job, clip)
    # every private thread only for the operator's whole-space search; a channel list without
    # `private` sees none of them
    scopes = None if channels is None and private is None else frozenset(private or ())
    place = Filter(channels=None if channels is None else frozenset(channels), private_scopes=scopes)
    if text and not terms and not image and not similar and not vector_ref and not expand:
        terms = [[phrase, 1.0] for phrase in text]  # only `text:"..."`: it is also what to look for
    if expand:  # a collapsed result's near-duplicates: like its picture, within the threshold
        vector = _similar_vector(clip, index, space, place, expand)
    else:
        vector = _query_vector(job, clip, index, space, place, terms, image, similar, vector_ref)
    ref = vector_ref or uuid.uuid4().hex[:16]
    if not vector_ref:
        job.store.set(_VECTOR + ref, encode_vector(vector), ttl=VECTOR_TTL)
    resolved, unknown = _authors(index, clip.fingerprint, space, place, authors, vector)
    where = dataclasses.replace(place, authors=resolved, after=after, before=before, text=tuple(text or ()))
    cutoff = _cutoff(job, clip, index, space) if calibrate and not expand else None
    if expand:
        found = pipeline.near_duplicates(index, clip.fingerprint, space, vector, where, k=k, offset=offset,
                                         duplicate_cosine=settings.duplicate_cosine)
    else:
        words = query_words([t for t, w in terms or () if w > 0] + list(text or ()))
        found = pipeline.search(index, clip.fingerprint, space, vector, where, k=k, offset=offset,
                                exclude_message=exclude, words=words, duplicate_cosine=settings.duplicate_cosine,
                                weak_below=cutoff)
    sheet = _sheet(job, index, space, found, first_number=offset + 1) if found.results else None
    return SearchPage(results=tuple(hit for hit, _ in found.results), sheet=sheet, model=clip.spec, vector_ref=ref,
                      meaningless=bool(clip.meaningless), reindexing=job.store.get(_REEMBEDDING) is not None,
                      more=found.more, cutoff=None if cutoff is None else round(cutoff, 4),
                      unknown_authors=unknown)


def _cutoff(job: JobContext, clip: ClipModel, index: ImageIndex, space: str) -> float | None:
    """The space's relevance cut-off for text queries (`plugins.search.relevance`)."""
    background = relevance.space_background(job.store, index, space, clip.fingerprint,
                                            lambda: pipeline.background_vectors(clip))
    return background.cutoff(job.plugin_settings("search").relevance_z)


def _authors(index: ImageIndex, model: str, space: str, place: Filter, authors: list | None,
             vector: np.ndarray) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """`from:` as typed (ids, mentions, display names seen in this space) → author ids, and the
    names that match nobody who posted a picture in the searched channels (asked within them, so
    the answer says nothing about channels the requester cannot read)."""
    if authors is None:
        return None, ()
    resolved: set[str] = set()
    unknown = []
    for typed in authors:
        ids = {typed} | index.author_ids(space, [typed])
        seen = index.search(space, model, vector, dataclasses.replace(place, authors=frozenset(ids)), k=1)
        resolved |= ids
        if not seen:
            unknown.append(typed)
    return frozenset(resolved), tuple(unknown)


def _sheet(job: JobContext, index: ImageIndex, space: str, found: "pipeline.Found", *, first_number: int) -> str:
    thumbs = index.thumbnails(space, [h for _, h in found.results])
    hits = [hit for hit, _ in found.results]
    png = contact_sheet([thumbs.get(h) for _, h in found.results], first_number=first_number,
                        captions=[_caption(hit) for hit in hits], dimmed=[hit.weak for hit in hits])
    return job.blobs.put(png, ttl=SHEET_TTL)


def _caption(hit: Hit) -> str:
    return f"{hit.score:.2f}" + (f"  +{hit.similar}" if hit.similar else "")


def _check_query(k: object, offset: object, terms: object, channels: object, authors: object,
                 private: object, text: object) -> None:
    if not isinstance(k, int) or not 1 <= k <= MAX_TOP:
        raise UserError(f"top must be between 1 and {MAX_TOP}.")
    if not isinstance(offset, int) or not 0 <= offset <= 10_000:
        raise UserError("That page is out of range.")
    if terms is not None:
        if not isinstance(terms, list) or len(terms) > MAX_TERMS or any(
                not isinstance(t, list) or len(t) != 2 or not isinstance(t[0], str) or not t[0].strip()
                or len(t[0]) > MAX_TERM_CHARS or not isinstance(t[1], (int, float)) for t in terms):
            raise UserError(f"Give up to {MAX_TERMS} search terms of up to {MAX_TERM_CHARS} characters.")
    if text is not None and (not isinstance(text, list) or len(text) > MAX_TERMS or any(
            not isinstance(p, str) or not tokens(p) or len(p) > MAX_TERM_CHARS for p in text)):
        raise UserError(f"Give up to {MAX_TERMS} text: phrases of up to {MAX_TERM_CHARS} characters, "
                        "each with a word in it.")
    for name, value in (("channels", channels), ("authors", authors), ("private", private)):
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise UserError(f"Bad {name} filter.")


def _query_vector(job: JobContext, clip: ClipModel, index: ImageIndex, space: str, where: Filter,
                  terms: list | None, image: str | None, similar: dict | None,
                  vector_ref: str | None) -> np.ndarray:
    if vector_ref:
        saved = job.store.get(_VECTOR + vector_ref)
        if saved is None:
            raise UserError("That search has expired; run /search again.")
        return decode_vector(saved)
    if similar:
        return _similar_vector(clip, index, space, where, similar)
    parts = []
    if terms:
        parts.append(pipeline.encode_terms(clip, [(t, float(w)) for t, w in terms]))
    if image:
        parts.append(pipeline.encode_picture(clip, job.blobs.get(image), **_image_limits(job)))
    if not parts:
        raise UserError("Tell me what to look for: words or a picture.")
    return pipeline.unit(sum(parts))


def _similar_vector(clip: ClipModel, index: ImageIndex, space: str, where: Filter, similar: dict) -> np.ndarray:
    message, channel = str(similar.get("message_id") or ""), similar.get("channel_id")
    found = [o for o in index.occurrences(space, message, channel) if where.shows_place(o)]
    if not found:  # the same answer whether it does not exist or is not readable: nothing leaks
        raise UserError("I don't have a picture from that message in a channel you can read.")
    vector = index.embedding(space, found[0].content_hash, clip.fingerprint)
    if vector is None:
        raise UserError("That picture is being re-indexed for a new model; try again in a while.")
    return vector
