"""The safety settings (CLIPBOT_SAFETY_*), shared by every feature that makes pictures.

The built-in plugin `safety` (plugins/safety: /safety, /audit) registers them, so `clipbot plugins`
lists them; features read them through `safety_settings(face)`, which falls back to the
environment when that plugin is not loaded: turning the commands off never turns the checks off.

Thresholds are cosines of L2-normalised CLIP embeddings and belong to one model: the defaults
are a starting point for ViT-B-32 (image-to-text cosines of a match sit around 0.25 to 0.3), to
be calibrated on your own pictures. On a model with random test weights (`tiny-test`,
`ARCH:random`) cosines mean nothing, so the built-in concepts are not applied there; concepts
you configure always are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.safety.rules import Concept, parse_blocklist, parse_concepts
from engine.settings import split_list

if TYPE_CHECKING:
    from engine.face import EngineFace

__all__ = ["DEFAULT_CONCEPTS", "DEFAULT_PROMPT_CONCEPTS", "Policy", "SafetySettings", "safety_settings"]

Policy = Literal["allow", "blur", "stop"]
ENV_PREFIX = "CLIPBOT_SAFETY_"
# Image-to-text cosines (ViT-B-32): a picture that shows the concept scores about 0.25-0.32.
DEFAULT_CONCEPTS = ("explicit nudity=0.28, a pornographic photo=0.28, sexual intercourse=0.28, "
                    "graphic gore=0.27, a mutilated bloody corpse=0.27")
# Text-to-text cosines run much higher (unrelated sentences often score 0.6-0.8): keep these high.
DEFAULT_PROMPT_CONCEPTS = "explicit nudity=0.93, a pornographic photo=0.93, graphic gore=0.93"


class SafetySettings(BaseSettings):
    """Safety settings: CLIPBOT_SAFETY_<NAME>."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_file=".env", extra="ignore")

    blocklist: Annotated[list[str], NoDecode] = Field(
        [], description="words or phrases a prompt may not contain (comma-separated; `rule=phrase` names the "
        "rule); word-bounded, case-, accent- and leetspeak-blind; checked before anything is queued")
    concepts: str | None = Field(
        None, description="what a generated picture is compared with: `TEXT=THRESHOLD, /path/example.png="
        "THRESHOLD` or a JSON list; unset: built-in NSFW/gore concepts (not applied on test models)")
    prompt_concepts: str | None = Field(
        None, description="what a prompt's CLIP text embedding is compared with, same forms; unset: built-in "
        "concepts with high thresholds (not applied on test models)")
    policy: Policy = Field("blur", description="what a picture that matches a concept gets where a channel "
                           "sets nothing: blur (blurred, spoilered where the platform can), stop, or allow")
    blur_radius: float = Field(0.1, gt=0, le=1, description="Gaussian blur radius as a share of the picture's "
                               "larger side")
    audit_keep: int = Field(1000, ge=10, description="moderation log entries kept per space (oldest go first)")

    _split = field_validator("blocklist", mode="before")(split_list)

    @field_validator("concepts", "prompt_concepts")
    @classmethod
    def _parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_concepts(value)  # ValueError: one line at start-up, naming the variable
        return value

    @classmethod
    def load(cls, plugin_name: str = "safety", **overrides: Any) -> "SafetySettings":
        """Read from the environment (the `clipbot_settings` contract; the prefix is always
        CLIPBOT_SAFETY_)."""
        return cls(**overrides)

    def phrases(self) -> list[tuple[str, str]]:
        return parse_blocklist(self.blocklist)

    def output_concepts(self, *, meaningless: bool) -> list[Concept]:
        """The concepts pictures are checked against on this model (`meaningless`: random weights)."""
        return _chosen(self.concepts, DEFAULT_CONCEPTS, meaningless)

    def text_concepts(self, *, meaningless: bool) -> list[Concept]:
        """The concepts prompts are checked against on this model."""
        return _chosen(self.prompt_concepts, DEFAULT_PROMPT_CONCEPTS, meaningless)


def _chosen(configured: str | None, default: str, meaningless: bool) -> list[Concept]:
    if configured is not None:
        return parse_concepts(configured)
    return [] if meaningless else parse_concepts(default)


def safety_settings(face: "EngineFace") -> SafetySettings:
    """The safety settings of this process: the `safety` plugin's, or read from the environment."""
    try:
        return face.plugin_settings("safety")
    except KeyError:
        return SafetySettings.load()
