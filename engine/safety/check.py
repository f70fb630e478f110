"""The safety checks that need the model (heavy: torch; workers only).

As the Stable Diffusion safety checker does, a picture's CLIP image embedding is compared with
each concept's embedding (a text through the text tower, an example picture through the image
tower), each with its own threshold; the same for a prompt's text embedding. A picture that
matches is blurred (a strong Gaussian blur, here, before it is stored or sent) or stops the job,
as the channel's policy says. Concept embeddings are computed once per process and model (an
example picture again when its file changes).
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageFilter

from engine.errors import UserError
from engine.images import decode_image
from engine.models.clip import ClipModel
from engine.safety.rules import Concept

__all__ = ["Match", "PictureGuard", "blur_png", "concept_matrix"]

log = logging.getLogger(__name__)
_CACHE: dict[tuple, torch.Tensor] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Match:
    """A concept an embedding matched: its name, the cosine and the threshold it reached."""

    name: str
    cosine: float
    threshold: float


def concept_matrix(clip: ClipModel, concepts: list[Concept]) -> torch.Tensor:
    """[K, D] unit embeddings of `concepts`, in order (cached per model, text and picture bytes)."""
    pictures = {c.image: _read(c) for c in concepts if c.image}
    key = (clip.spec, clip.fingerprint, tuple((c.text, hashlib.sha256(pictures.get(c.image, b"")).hexdigest())
                                             for c in concepts))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    rows = torch.empty(len(concepts), clip.embed_dim)
    texts = [i for i, c in enumerate(concepts) if c.text]
    if texts:
        rows[texts] = clip.encode_texts([concepts[i].text for i in texts])
    images = [i for i, c in enumerate(concepts) if c.image]
    if images:
        rows[images] = clip.encode_images([decode_image(pictures[concepts[i].image]) for i in images])
    with _CACHE_LOCK:
        _CACHE[key] = rows
    return rows


def _read(concept: Concept) -> bytes:
    try:
        return Path(concept.image).expanduser().read_bytes()
    except OSError as exc:
        raise UserError(f"The safety concept picture {concept.name!r} cannot be read ({exc.strerror}); "
                        "ask the operator to fix CLIPBOT_SAFETY_CONCEPTS.") from None


def first_match(embedding: torch.Tensor, matrix: torch.Tensor, concepts: list[Concept]) -> Match | None:
    """The concept `embedding` ([D], unit) matches by the widest margin, or None."""
    if not concepts:
        return None
    cosines = (matrix @ embedding).tolist()
    hits = [(cos - c.threshold, Match(c.name, round(cos, 4), c.threshold))
            for cos, c in zip(cosines, concepts) if cos >= c.threshold]
    return max(hits, key=lambda hit: hit[0])[1] if hits else None


def blur_png(png: bytes, share: float) -> bytes:
    """The picture under a Gaussian blur of radius `share` × its larger side (at least 8 px)."""
    with Image.open(io.BytesIO(png)) as opened:
        picture = opened.convert("RGB")
    radius = max(8.0, share * max(picture.size))
    out = io.BytesIO()
    picture.filter(ImageFilter.GaussianBlur(radius)).save(out, format="PNG")
    return out.getvalue()


class PictureGuard:
    """One job's checks: its prompt, then every picture it makes, against the concepts. `policy`
    is `blur` or `stop`; `hit(kind, match, step)` is told of each first hit (to log it)."""

    def __init__(self, clip: ClipModel, *, pictures: list[Concept], prompts: list[Concept], policy: str,
                 blur_share: float, hit: Callable[[str, Match, int | None], None]) -> None:
        self.clip, self.policy, self.blur_share, self._hit = clip, policy, blur_share, hit
        self._pictures, self._prompts = pictures, prompts
        self._picture_matrix = concept_matrix(clip, pictures) if pictures else None
        self._prompt_matrix = concept_matrix(clip, prompts) if prompts else None
        self.flagged: Match | None = None  # the first picture match of this job
        self._seen: dict[str, tuple[bytes, Match | None]] = {}  # the last picture's digest -> result

    def check_prompt(self, texts: list[str]) -> None:
        """Refuse (UserError, the refusal line) a prompt whose text embedding matches a concept."""
        from engine.safety.rules import refusal

        if self._prompt_matrix is None or not texts:
            return
        for embedding in self.clip.encode_texts(texts):
            match = first_match(embedding, self._prompt_matrix, self._prompts)
            if match is not None:
                self._hit("refused", match, None)
                raise UserError(refusal(match.name))

    def screen(self, png: bytes, step: int | None = None) -> tuple[bytes, Match | None]:
        """(the picture to store and send, the concept it matched): blurred on a match; raises
        UserError on a match under `stop`."""
        digest = hashlib.sha256(png).hexdigest()
        if digest in self._seen:  # the final picture is the last snapshot: checked once
            return self._seen[digest]
        match = self._match(png)
        if match is None:
            result: tuple[bytes, Match | None] = (png, None)
        elif self.policy == "stop":
            self._hit("stopped", match, step)
            raise UserError(f"That picture is not allowed here (rule: {match.name}); the job was stopped.")
        else:
            if self.flagged is None:
                self.flagged = match
                self._hit("blurred", match, step)
            result = (blur_png(png, self.blur_share), match)
        self._seen = {digest: result}
        return result

    def _match(self, png: bytes) -> Match | None:
        if self._picture_matrix is None:
            return None
        with Image.open(io.BytesIO(png)) as opened:
            picture = opened.convert("RGB")
        embedding = self.clip.encode_images([picture])[0]
        return first_match(embedding, self._picture_matrix, self._pictures)
