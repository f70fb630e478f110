"""Indexing and querying as functions of a loaded CLIP model and an ImageIndex (heavy: torch).

`index_items` embeds every new picture of a batch in ONE model call; pictures already
embedded with this model (the same bytes posted again) only gain an occurrence. In the same
pass each new picture's text is read (OCR, `engine.models.ocr`) where its space has OCR on,
in the decoding threads, and stored with its embedding.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np
from PIL import Image

from engine.errors import UserError
from engine.images import REDUCING_GAP, decode_image, reduce_for_side
from engine.index import Filter, ImageIndex, Occurrence, unit
from engine.index import Hit as IndexHit
from engine.models.clip import ClipModel
from plugins.search import relevance
from plugins.search.ranking import FUSION_DEPTH, excerpt, fuse
from plugins.search.results import Hit, Indexed
from plugins.search.sheet import PREVIEW_SIDE, make_preview

if TYPE_CHECKING:
    from engine.models.ocr import OcrReader

log = logging.getLogger(__name__)

_TEXT_CACHE_SLOTS = 512
MAX_MESSAGE_TEXT = 4000  # characters of a message's text kept with its pictures (Slack's can be 40k)
MAX_FILE_NAME = 255
_text_cache: "OrderedDict[tuple[str, str], np.ndarray]" = OrderedDict()
_text_lock = threading.Lock()
_background: dict[str, np.ndarray] = {}
_executor: ThreadPoolExecutor | None = None
_executor_pid = 0


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def index_items(index: ImageIndex, clip: ClipModel, items: list[dict], load: Callable[[str], bytes], *,
                max_bytes: int, max_pixels: int, ocr: "OcrReader | None" = None,
                ocr_in: Callable[[str], bool] = lambda space: True) -> Indexed:
    """Index posted pictures. Each item: space_id, channel_id, message_id, key (blob), and
    optionally source_id, author_id, author_name, posted_at, permalink, thread_id, platform,
    message_text, file_name. A picture that is gone from the blob store or is not a readable
    image is skipped. With `ocr`, new pictures of the spaces where `ocr_in(space)` have their
    text read too."""
    occurrences: dict[str, list[Occurrence]] = {}
    data_of: dict[tuple[str, str], bytes] = {}
    skipped = 0
    for item in items:
        try:
            data = load(item["key"])
        except UserError:
            skipped += 1
            continue
        h = content_hash(data)
        occurrences.setdefault(item["space_id"], []).append(_occurrence(item, h))
        data_of.setdefault((item["space_id"], h), data)
    todo = [(space, h) for space, occs in occurrences.items()
            for h in sorted(index.missing(space, [o.content_hash for o in occs], clip.fingerprint))]
    # Reduced as /whatis reduces for CLIP, but never below what the stored preview needs.
    side = max(clip.image_size, -(-PREVIEW_SIDE // REDUCING_GAP))

    reading = {space: ocr is not None and ocr_in(space) for space in occurrences}

    def prepare(key: tuple[str, str]) -> tuple[Image.Image, bytes, str | None] | str:
        read = reading[key[0]]
        try:  # OCR wants more pixels than CLIP: decoded for it, then reduced for CLIP and the preview
            picture = decode_image(data_of[key], max_bytes=max_bytes, max_pixels=max_pixels,
                                   for_side=max(side, _ocr_side()) if read else side)
            text = read_text(ocr, picture) if read else None
            return reduce_for_side(picture, side), make_preview(picture), text
        except UserError as exc:
            return str(exc)

    # Pillow decodes and encodes, and ONNX Runtime reads text, without the GIL: a few threads
    # keep a fast GPU fed.
    prepared = list(_pool().map(prepare, todo))
    images, previews, ok, texts = [], [], [], {}
    for (space, h), done in zip(todo, prepared):
        if isinstance(done, str):
            log.info("not indexing a picture in %s: %s", space, done)
            continue
        images.append(done[0])
        previews.append(done[1])
        ok.append((space, h))
        if done[2] is not None:
            texts.setdefault(space, {})[h] = done[2]
    vectors = clip.encode_images(images).numpy() if images else np.zeros((0, 0), np.float32)
    embedded: dict[str, dict[str, tuple[np.ndarray, bytes]]] = {}
    for (space, h), vector, preview in zip(ok, vectors, previews):
        embedded.setdefault(space, {})[h] = (vector, preview)
    added = 0
    for space, occs in occurrences.items():
        new = embedded.get(space, {})
        keep = [o for o in occs if o.content_hash in new or o.content_hash not in {h for s, h in todo if s == space}]
        skipped += len(occs) - len(keep)
        added += index.add(space, clip.fingerprint, new, keep, texts=texts.get(space))
    return Indexed(indexed=added, embedded=len(ok), skipped=skipped, batch=len(items),
                   read=sum(len(t) for t in texts.values()))


def read_text(ocr: "OcrReader", picture: Image.Image) -> str | None:
    """The text on a picture as the index stores it; None when OCR failed on it (it stays unread)."""
    from engine.models.ocr import lines_text

    try:
        return lines_text(ocr.read(picture))
    except Exception:  # one odd picture must not cost the batch its embeddings
        log.warning("OCR failed on a picture", exc_info=True)
        return None


def _ocr_side() -> int:
    from engine.models.ocr import READ_SIDE

    return -(-READ_SIDE // REDUCING_GAP)


def _pool() -> ThreadPoolExecutor:
    with _text_lock:
        if _executor is None or _executor_pid != os.getpid():  # a forked worker child needs its own
            _set_pool(ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="clipbot-decode"))
        return _executor


def _set_pool(pool: ThreadPoolExecutor) -> None:
    global _executor, _executor_pid
    _executor, _executor_pid = pool, os.getpid()


def _occurrence(item: dict, h: str) -> Occurrence:
    return Occurrence(
        space_id=str(item["space_id"]), channel_id=str(item["channel_id"]), message_id=str(item["message_id"]),
        content_hash=h, source_id=str(item.get("source_id") or ""), author_id=str(item.get("author_id") or ""),
        author_name=str(item.get("author_name") or ""), posted_at=float(item.get("posted_at") or 0.0),
        permalink=str(item.get("permalink") or ""), thread_id=item.get("thread_id"),
        platform=str(item.get("platform") or ""), private=bool(item.get("private")),
        message_text=str(item.get("message_text") or "")[:MAX_MESSAGE_TEXT],
        file_name=str(item.get("file_name") or "")[:MAX_FILE_NAME],
    )


def encode_terms(clip: ClipModel, terms: Iterable[tuple[str, float]]) -> np.ndarray:
    """The weighted sum of the terms' text embeddings, normalised. Each text is encoded once
    per model and cached, so repeating or paging a query costs no model call."""
    terms = list(terms)
    missing = [t for t, _ in terms if (clip.fingerprint, t) not in _text_cache]
    if missing:
        encoded = clip.encode_texts(list(dict.fromkeys(missing))).numpy()
        with _text_lock:
            for text, vector in zip(dict.fromkeys(missing), encoded):
                _text_cache[(clip.fingerprint, text)] = vector
                while len(_text_cache) > _TEXT_CACHE_SLOTS:
                    _text_cache.popitem(last=False)
    with _text_lock:
        vectors = []
        for text, weight in terms:
            vector = _text_cache.get((clip.fingerprint, text))
            if vector is None:  # evicted by a concurrent query meanwhile
                vector = clip.encode_texts([text]).numpy()[0]
            _text_cache[(clip.fingerprint, text)] = vector
            vectors.append(weight * vector)
    return unit(np.sum(vectors, axis=0))


def background_vectors(clip: ClipModel) -> np.ndarray:
    """The relevance background's query texts embedded with this model (once per process)."""
    with _text_lock:
        cached = _background.get(clip.fingerprint)
    if cached is None:
        cached = clip.encode_texts(list(relevance.BACKGROUND_QUERIES)).numpy()
        with _text_lock:
            _background[clip.fingerprint] = cached
    return cached


def encode_picture(clip: ClipModel, data: bytes, *, max_bytes: int, max_pixels: int) -> np.ndarray:
    picture = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels, for_side=clip.image_size)
    return unit(clip.encode_images([picture]).numpy()[0])


_MIN_SCAN = 100  # index hits read at least: "+N similar" counts the near-duplicates among them
_MAX_SCAN = 1000  # index hits read at most to fill a page of collapsed results


@dataclass(frozen=True)
class Found:
    """A page of results (each with its picture's content hash, for the thumbnails), and whether
    there are more after it."""

    results: list[tuple[Hit, str]]
    more: bool


def search(index: ImageIndex, model: str, space: str, vector: np.ndarray, where: Filter, *, k: int, offset: int,
           exclude_message: str | None = None, words: list[str] | tuple[str, ...] = (),
           duplicate_cosine: float = 1.0, weak_below: float | None = None) -> Found:
    """Results offset..offset+k-1, best first, near-duplicates collapsed into the first of them
    (`Hit.similar`: how many among the first `_MIN_SCAN` or more hits read), those scoring under
    `weak_below` marked weak (unless their words matched). With `words`, CLIP's ranking is fused
    with the full-text one (`plugins.search.ranking`). Reads index hits in growing windows until one
    result past the page is found (so "More" shows only when there is more)."""
    want = offset + k + 1
    window = max(_MIN_SCAN, 2 * want)
    cap = max(_MAX_SCAN, want)
    while True:
        hits, matched, exhausted = _ranked(index, model, space, vector, where, window, words)
        exhausted = exhausted or window >= cap
        kept = [h for h in hits if not exclude_message or h.occurrence.message_id != exclude_message]
        vectors = index.embeddings(space, [h.occurrence.content_hash for h in kept], model)
        groups = relevance.collapse(kept, vectors.get, duplicate_cosine)
        if len(groups) >= want or exhausted:
            break
        window = min(cap, 2 * window)
    shown = groups[offset:offset + k]
    texts = index.texts(space, [g.hit.occurrence.content_hash for g in shown])
    page = [(_hit(g.hit, similar=len(g.similar), weak_below=weak_below,
                  text=excerpt(texts.get(g.hit.occurrence.content_hash, ""), words),
                  text_match=g.hit.occurrence in matched), g.hit.occurrence.content_hash)
            for g in shown]
    return Found(page, more=len(groups) > offset + k)


def _ranked(index: ImageIndex, model: str, space: str, vector: np.ndarray, where: Filter, window: int,
            words: list[str] | tuple[str, ...]) -> tuple[list[IndexHit], set[Occurrence], bool]:
    """The first `window` or more candidates best first, each with its CLIP cosine; the ones whose
    words matched; and whether the index has no more."""
    if not words:
        hits = index.search(space, model, vector, where, k=window)
        return hits, set(), len(hits) < window
    depth = max(FUSION_DEPTH, window)
    looks = index.search(space, model, vector, where, k=depth)
    matched = index.text_search(space, model, list(words), where, k=depth)
    cosine = {hit.occurrence: hit.score for hit in looks}
    beyond = [o for o in matched if o not in cosine]  # text matches past CLIP's candidates: their own cosine
    stored = index.embeddings(space, [o.content_hash for o in beyond], model)
    for o in beyond:
        cosine[o] = float(unit(stored[o.content_hash]) @ vector) if o.content_hash in stored else 0.0
    fused = fuse([hit.occurrence for hit in looks], matched, depth=depth)
    return [IndexHit(o, cosine[o]) for o in fused], set(matched), len(looks) < depth and len(matched) < depth


def near_duplicates(index: ImageIndex, model: str, space: str, vector: np.ndarray, where: Filter, *, k: int,
                    offset: int, duplicate_cosine: float) -> Found:
    """The pictures within the duplicate threshold of `vector` (a collapsed result expanded)."""
    hits = [h for h in index.search(space, model, vector, where, k=offset + k + 1) if h.score >= duplicate_cosine]
    return Found([(_hit(h), h.occurrence.content_hash) for h in hits[offset:offset + k]], more=len(hits) > offset + k)


def _hit(hit: IndexHit, *, similar: int = 0, weak_below: float | None = None, text: str = "",
         text_match: bool = False) -> Hit:
    o = hit.occurrence
    return Hit(message_id=o.message_id, channel=o.channel_id, author=o.author_id, author_name=o.author_name or "",
               score=round(hit.score, 4), permalink=o.permalink or "", posted_at=o.posted_at, thread_id=o.thread_id,
               text=text, message_text=o.message_text, file_name=o.file_name, text_match=text_match, similar=similar,
               weak=weak_below is not None and hit.score < weak_below and not text_match)


def reembed(index: ImageIndex, clip: ClipModel, limit: int, *, max_pixels: int, ocr: "OcrReader | None" = None,
            ocr_in: Callable[[str], bool] = lambda space: True) -> int:
    """Re-embed up to `limit` pictures whose embedding comes from another model, from their
    stored previews, in one model call; with `ocr`, those never read (indexed before OCR, or
    while it was off) have their text read from the preview too. Returns how many were done."""
    stale = index.stale(clip.fingerprint, limit)
    by_space: dict[str, list[str]] = {}
    for space, h in stale:
        by_space.setdefault(space, []).append(h)
    done = 0
    for space, hashes in by_space.items():
        previews = index.thumbnails(space, hashes)
        usable = [h for h in hashes if h in previews]
        pictures = [decode_image(previews[h], max_pixels=max_pixels) for h in usable]
        vectors = clip.encode_images(pictures).numpy() if pictures else []
        unread = set(usable) - set(index.texts(space, usable)) if ocr is not None and ocr_in(space) else set()
        picture_of = dict(zip(usable, pictures))
        read = dict(zip(unread, _pool().map(lambda h: read_text(ocr, picture_of[h]), unread)))
        index.add(space, clip.fingerprint, {h: (v, None) for h, v in zip(usable, vectors)}, [],
                  texts={h: t for h, t in read.items() if t is not None})
        done += len(usable)
        if len(usable) < len(hashes):  # only pictures indexed without a preview; they stay stale
            log.warning("%d pictures in %s have no preview to re-embed from", len(hashes) - len(usable), space)
    return done
