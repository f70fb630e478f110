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
class Classification(Wire):
    """The `top` labels best first, the model that scored them, and whether that model is a
    random test preset (its answers mean nothing)."""

    model: str
    labels: tuple[Scored, ...]
    meaningless: bool = False

    @property
    def best(self) -> Scored:
        return self.labels[0]
