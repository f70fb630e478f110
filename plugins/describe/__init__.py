"""/describe: CLIP reads a picture back as words and /imagine prompts.

CLIP ranks a shipped vocabulary (subjects, mediums, styles and movements, artists, lighting,
colours, framing: `plugins/describe/vocab/*.txt`, extendable by admins) against the picture;
four prompts are composed from the best terms, each with an **Imagine this** button (a
pre-filled /imagine). Also a message menu / shortcut, "Describe", on any picture.

This module is the light part (command and answer; no torch); the worker imports
`plugins.describe.tasks`, which runs `plugins.describe.pipeline`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, AsyncIterator

from pydantic import Field

from bot.commands import Attachment, Reply, command
from bot.config import PluginSettings
from bot.hookspecs import hookimpl
from bot.markup import bold, code, escape, italic
from engine.errors import UserError
from engine.jobs import PROGRESS, SUCCEEDED
from plugins.describe.compose import imagine_action
from plugins.describe.results import Description
from plugins.describe.vocab import KINDS

if TYPE_CHECKING:
    from engine.face import EngineFace

TASK = "describe.describe"
MAX_PER_KIND = 10


class DescribeSettings(PluginSettings):
    """/describe settings: CLIPBOT_DESCRIBE_<NAME>."""

    terms: int = Field(3, ge=1, le=MAX_PER_KIND, description="best terms of each kind a /describe answer lists")
    vocab_dir: str = Field("", description="a folder of <kind>.txt files whose terms add to the shipped vocabulary "
                                           "(default: <data dir>/describe/vocab)")


async def describe_updates(engine: "EngineFace", image_key: str, per_kind: int) -> AsyncIterator[Reply | Description]:
    """The describe job as a stream: a progress `Reply` while a model meets the vocabulary for the
    first time ("preparing the vocabulary: 40%"), then the `Description`."""
    job_id = await asyncio.to_thread(engine.submit, TASK, {"image": image_key, "per_kind": per_kind}, queue="gpu")
    async for event in engine.follow(job_id):
        if event.kind == PROGRESS:
            step, total = event.data.get("step", 0), event.data.get("total") or 1
            yield Reply(text=event.data.get("message") or "working…", progress=min(1.0, step / total))
        elif event.kind == SUCCEEDED:
            yield Description.from_json(event.data.get("result") or {})


def format_answer(result: Description) -> str:
    lines = [bold("Prompts for this picture") + " (CLIP's best words from the vocabulary):"]
    lines += [f"{i}. {code(prompt)}" for i, prompt in enumerate(result.prompts, 1)]
    for kind in KINDS:
        found = [t for t in result.terms if t.kind == kind]
        if found:
            lines.append(f"{kind}: " + ", ".join(f"{escape(t.term)} ({t.score:.3f})" for t in found))
    if result.meaningless:
        lines.append(f"⚠ {escape(result.model)} is a random test model; these words mean nothing.")
    lines.append(italic(f"{result.model}, cosine similarity of picture and words"))
    return "\n".join(lines)


@command
async def describe(
    ctx,
    image: Annotated[Attachment, "the picture to describe"],
    terms: Annotated[int, f"best terms of each kind to list (1-{MAX_PER_KIND})"] = 0,
) -> AsyncIterator[Reply]:
    """Describe a picture as words and four /imagine prompts, each with an Imagine button."""
    per_kind = terms or ctx.plugin_settings("describe").terms
    if not 1 <= per_kind <= MAX_PER_KIND:
        raise UserError(f"terms must be between 1 and {MAX_PER_KIND}.")
    result: Description | None = None
    async for update in describe_updates(ctx.engine, image.key, per_kind):
        if isinstance(update, Reply):
            yield update
        else:
            result = update
    if result is None:
        raise RuntimeError("the describe job ended without a result")
    actions = tuple(imagine_action(prompt, f"Imagine this #{i}") for i, prompt in enumerate(result.prompts, 1))
    data = {"prompts": list(result.prompts), "terms": [t.to_json() for t in result.terms]}
    yield Reply(text=format_answer(result), final=True, data=data, actions=actions)


@hookimpl
def clipbot_commands():
    return [describe]


@hookimpl
def clipbot_task_modules():
    return ["plugins.describe.tasks"]


@hookimpl
def clipbot_settings():
    return DescribeSettings
