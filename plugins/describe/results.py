"""What a /describe job answers, typed (light: no torch). The task returns a `Description`; the
handler decodes the job's JSON back into one (`engine.wire`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.wire import Wire


@dataclass(frozen=True)
class Term(Wire):
    """One vocabulary term, its kind (subjects, mediums, ...) and its cosine similarity to the
    picture (CLIP's image and text embeddings, -1..1)."""

    term: str
    kind: str
    score: float


@dataclass(frozen=True)
class Description(Wire):
    """The four composed prompts (best first), the best terms of each kind (kinds in vocabulary
    order, best first within a kind), the model that scored them, and whether it is a random
    test preset (then the words mean nothing)."""

    model: str
    prompts: tuple[str, ...]
    terms: tuple[Term, ...]
    meaningless: bool = False
