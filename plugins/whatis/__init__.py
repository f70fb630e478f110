"""/whatis: CLIP zero-shot classification of a posted picture, with per-channel label sets.

This module is the light part (commands and handlers, no torch); the worker imports
`plugins.whatis.tasks`, which runs `plugins.whatis.pipeline`.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Literal

from pydantic import Field

from bot.commands import Attachment, Image, Reply, command
from bot.config import PluginSettings
from bot.hookspecs import hookimpl
from bot.markup import bold, code, escape, italic
from engine.errors import UserError
from engine.jobs import PROGRESS, SUCCEEDED
from plugins.whatis.chart import render_chart
from plugins.whatis.results import Classification
from plugins.whatis.labels import DEFAULT_SET, LabelSets, check_set_name, check_top, parse_labels

if TYPE_CHECKING:
    from bot.dispatch import CommandContext
    from engine.face import EngineFace

TASK = "whatis.classify"
IMAGENET = "ImageNet-1k"
MAX_TOP = 20


class WhatisSettings(PluginSettings):
    """/whatis settings: CLIPBOT_WHATIS_<NAME>."""

    top: int = Field(5, ge=1, le=MAX_TOP, description="labels shown in a /whatis answer")
    threshold: float = Field(0.1, ge=0, le=1, description="below this best probability, answer 'none of these'")
    max_labels: int = Field(1000, ge=2, description="most labels one /whatis may ask for")
    label_cache_mb: int = Field(512, ge=0, description="disk cache of label embeddings, in MB (least recently used go)")
    precompute: bool = Field(False, description="workers prepare the ImageNet label embeddings in the background at start")


async def classify_image(engine: "EngineFace", image_key: str, labels: list[str] | None,
                         top: int) -> Classification:
    """Run the classification job; `labels=None` means the ImageNet-1k class names."""
    async for update in classify_updates(engine, image_key, labels, top):
        if isinstance(update, Classification):
            return update
    raise RuntimeError("the classification job ended without a result")


async def classify_updates(engine: "EngineFace", image_key: str, labels: list[str] | None,
                           top: int) -> AsyncIterator[Reply | Classification]:
    """`classify_image` as a stream: a progress `Reply` for each progress event of the job (e.g.
    "preparing ImageNet labels: 35%" the first time a model meets a label set), then the result."""
    check_top(top, max_top=MAX_TOP)
    kwargs = {"image": image_key, "labels": labels, "top": top}
    job_id = await asyncio.to_thread(engine.submit, TASK, kwargs, queue="gpu")
    async for event in engine.follow(job_id):
        if event.kind == PROGRESS:
            step, total = event.data.get("step", 0), event.data.get("total") or 1
            percent = min(100, 100 * step // total)  # whole percents, floored, as in the message
            yield Reply(text=event.data.get("message") or "working…", progress=percent / 100)
        elif event.kind == SUCCEEDED:
            yield Classification.from_json(event.data.get("result") or {})


def resolve_labels(ctx: "CommandContext", text: str) -> tuple[list[str] | None, str]:
    """Labels for this call and where they came from: typed, a saved set, or ImageNet."""
    sets = LabelSets(ctx.store, ctx.request.platform, ctx.request.channel_id)
    max_labels = ctx.plugin_settings("whatis").max_labels
    text = text.strip()
    if not text:
        saved = sets.get(DEFAULT_SET)
        return (saved, "this channel's labels") if saved else (None, IMAGENET)
    if "," not in text and ";" not in text and "\n" not in text:
        saved = sets.get(text)
        if saved:
            return saved, f"label set '{text}'"
        raise UserError(
            f"There is no label set called '{text}' in this channel. Give at least two labels separated by "
            f"commas, or see {code('/labels show')}."
        )
    return parse_labels(text, max_labels=max_labels), "your labels"


def format_answer(result: Classification, source: str, threshold: float) -> tuple[str, str]:
    """The reply text and the chart's note for a classification result."""
    best = result.best
    lines = []
    if best.score < threshold:
        lines.append(f"I'm not sure: none of these fits well (best guess {escape(best.label)}, {best.score:.0%}).")
    else:
        lines.append(f"Looks like {bold(best.label)} ({best.score:.0%}).")
    lines += [f"{i}. {escape(item.label)}: {item.score:.1%}" for i, item in enumerate(result.labels, 1)]
    note = f"{result.model} · labels: {source}"
    if result.meaningless:
        note += " · random test model: meaningless"
        lines.append(f"⚠ {escape(result.model)} is a random test model; these answers mean nothing.")
    lines.append(italic(f"{result.model}, labels: {source}"))
    return "\n".join(lines), note


@command
async def whatis(
    ctx,
    image: Annotated[Attachment, "the picture to classify"],
    labels: Annotated[str, "labels separated by commas, or a saved label set's name"] = "",
    top: Annotated[int, f"how many guesses to show (1-{MAX_TOP})"] = 0,
) -> AsyncIterator[Reply]:
    """Say what is in a picture (CLIP zero-shot classification)."""
    config = ctx.plugin_settings("whatis")
    label_list, source = await ctx.run_blocking(resolve_labels, ctx, labels)
    top = top or config.top
    if label_list is not None:
        top = min(top, len(label_list))
    result: Classification | None = None
    async for update in classify_updates(ctx.engine, image.key, label_list, top):
        if isinstance(update, Reply):
            yield update  # "preparing ImageNet-1k labels: 35%" while a label matrix is built
        else:
            result = update
    if result is None:
        raise RuntimeError("the classification job ended without a result")
    text, note = format_answer(result, source, config.threshold)
    chart = await ctx.run_blocking(render_chart, result.labels, title=f"What is {image.filename}?", note=note)
    json = result.to_json()
    yield Reply(text=text, images=(Image(chart, "whatis.png", "label probabilities"),), final=True,
                data={"model": json["model"], "labels": json["labels"]})


@command
async def labels(
    ctx,
    action: Annotated[Literal["set", "show", "clear"], "what to do"],
    labels: Annotated[str, "for set: labels separated by commas"] = "",
    name: Annotated[str, "the label set's name (default: the channel's default set)"] = "",
) -> Reply:
    """Save, show or clear this channel's label sets for /whatis (changing them is for admins)."""
    sets = LabelSets(ctx.store, ctx.request.platform, ctx.request.channel_id)
    if action != "set" and labels and not name:
        name = labels  # `/labels clear pets` names the set positionally
    if action == "show":
        return Reply(text=await ctx.run_blocking(_show, sets, name), ephemeral=True,
                     data={"sets": await ctx.run_blocking(sets.all)})
    if not ctx.request.is_admin:
        raise UserError("Only admins can change this channel's label sets.")
    if action == "set":
        set_name = check_set_name(name or DEFAULT_SET)
        parsed = parse_labels(labels, max_labels=ctx.plugin_settings("whatis").max_labels)
        await ctx.run_blocking(sets.save, set_name, parsed)
        used = "by default in this channel" if set_name == DEFAULT_SET else f"with {code('labels: ' + set_name)}"
        return Reply(text=f"Saved {len(parsed)} labels as '{escape(set_name)}'; /whatis uses them {used}.",
                     data={"set": set_name, "labels": parsed})
    if not await ctx.run_blocking(sets.remove, name or None):
        return Reply(text=f"There is no label set '{name}' here." if name else "This channel has no label sets.")
    return Reply(text=f"Removed the label set '{name}'." if name else "Removed all of this channel's label sets.")


def _show(sets: LabelSets, name: str) -> str:
    if name:
        found = sets.get(name)
        return f"{escape(name)}: {escape(', '.join(found))}" if found else f"There is no label set '{escape(name)}' here."
    all_sets = sets.all()
    if not all_sets:
        return f"No label sets here; /whatis uses the {IMAGENET} classes. Admins: {code('/labels set cat, dog, person')}."
    return "\n".join(f"{escape(n)}: {escape(', '.join(v))}" for n, v in sorted(all_sets.items()))


@hookimpl
def clipbot_commands():
    return [whatis, labels]


@hookimpl
def clipbot_task_modules():
    return ["plugins.whatis.tasks"]


@hookimpl
def clipbot_settings():
    return WhatisSettings


@hookimpl
def clipbot_prepare(app, at_worker_start, report):
    config = app.plugin_settings("whatis")
    if at_worker_start and not config.precompute:
        return
    from plugins.whatis.tasks import prepare_imagenet_labels  # heavy: only where models load

    prepare_imagenet_labels(app.settings, config, report)
