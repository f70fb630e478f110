"""What a /whatis job answers, typed (light: no torch). The task returns a `Classification`; the
handler decodes the job's JSON back into one (`engine.wire`)."""

from __future__ import annotations

from dataclasses import dataclass

from engine.wire import Wire


@dataclass(frozen=True)
class Scored(Wire):
    """One label and its probability (0..1)."""

    label: str
    score: float


@dataclass(frozen=True)
class Explained(Wire):
    """A Where? heat map: the label and the blob key of its overlaid PNG (the handler takes it)."""

    label: str
    heatmap: str


@dataclass(frozen=True)
class Classification(Wire):
    """The `top` labels best first, the model that scored them, and whether that model is a
    random test preset (its answers mean nothing). `unsure`: the best label does not fit well
    (see `plugins.whatis.pipeline.is_unsure`). `picture`: the blob key of the picture kept for
    the Where? button ("" when none was kept). `explain`: heat maps of the top labels, when
    asked. `taught`: the labels scored with image examples as well as their text."""

    model: str
    labels: tuple[Scored, ...]
    meaningless: bool = False
    unsure: bool = False
    picture: str = ""
    explain: tuple[Explained, ...] = ()
    method: str = ""  # how the heat maps were made: maskclip | gradcam
    taught: tuple[str, ...] = ()

    @property
    def best(self) -> Scored:
        return self.labels[0]


@dataclass(frozen=True)
class Taught(Wire):
    """A /labels teach job's answer: the examples' image embeddings (float16, base64) under the
    model that made them, and the examples it could not use, each with why."""

    model: str
    vectors: tuple[str, ...]
    skipped: tuple[str, ...] = ()
