"""/whatis: CLIP zero-shot classification of a posted picture, with per-channel label sets.

This module is the light part (commands and handlers, no torch); the worker imports
`plugins.whatis.tasks`, which runs `plugins.whatis.pipeline`.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Literal

from pydantic import Field

from bot.commands import Action, Attachment, Image, Reply, command
from bot.config import PluginSettings
from bot.hookspecs import hookimpl
from bot.markup import bold, code, escape, italic
from engine.blobs import discard
from engine.errors import UserError
from engine.jobs import PROGRESS, SUCCEEDED
from plugins.whatis.chart import percent, render_chart
from plugins.whatis.results import Classification, Taught
from plugins.whatis.labels import (DEFAULT_SET, MAX_EXAMPLES, MAX_LABEL_CHARS, LabelSets, check_set_name, check_top,
                                   parse_labels)

if TYPE_CHECKING:
    from bot.dispatch import CommandContext
    from engine.face import EngineFace

TASK = "whatis.classify"
TEACH_TASK = "whatis.teach"
IMAGENET = "ImageNet-1k"
MAX_TOP = 20
_KEPT = "clipbot:whatis:kept:"  # what a Where? button's picture was asked about (labels, top)


class WhatisSettings(PluginSettings):
    """/whatis settings: CLIPBOT_WHATIS_<NAME>."""

    top: int = Field(5, ge=1, le=MAX_TOP, description="labels shown in a /whatis answer")
    threshold: float = Field(0.1, ge=0, le=1, description="below this best probability, answer 'none of these'")
    max_labels: int = Field(1000, ge=2, description="most labels one /whatis may ask for")
    label_cache_mb: int = Field(512, ge=0, description="disk cache of label embeddings, in MB (least recently used go)")
    precompute: bool = Field(False, description="workers prepare the ImageNet label embeddings in the background at start")
    unsure_margin: float = Field(2.0, ge=0, description="'not sure' unless the best label's cosine beats its scores on "
                                 "random background pictures by this many standard deviations")
    teach_text_weight: float = Field(0.5, ge=0, le=1, description="a taught label's prototype: this much text "
                                     "embedding, the rest its examples' mean image embedding")
    where_keep_s: int = Field(86400, ge=0, description="seconds a /whatis picture is kept for its Where? button (0: no button)")
    explain_top: int = Field(3, ge=1, le=MAX_TOP, description="labels a Where? answer draws a heat map for")


async def classify_image(engine: "EngineFace", image_key: str, labels: list[str] | None,
                         top: int, **extra: object) -> Classification:
    """Run the classification job; `labels=None` means the ImageNet-1k class names. `extra`:
    the task's other options (explain, keep, picture, examples: see `tasks.classify`)."""
    async for update in classify_updates(engine, image_key, labels, top, **extra):
        if isinstance(update, Classification):
            return update
    raise RuntimeError("the classification job ended without a result")


async def classify_updates(engine: "EngineFace", image_key: str | None, labels: list[str] | None,
                           top: int, **extra: object) -> AsyncIterator[Reply | Classification]:
    """`classify_image` as a stream: a progress `Reply` for each progress event of the job (e.g.
    "preparing ImageNet labels: 35%" the first time a model meets a label set), then the result."""
    check_top(top, max_top=MAX_TOP)
    kwargs = {"image": image_key, "labels": labels, "top": top, **extra}
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


def format_answer(result: Classification, source: str) -> tuple[str, str]:
    """The reply text and the chart's note for a classification result."""
    best = result.best
    lines = []
    if result.unsure:
        whose = f"the {IMAGENET} classes" if source == IMAGENET else "your labels"
        lines.append(f"I'm not sure: none of {whose} fits well (best guess {escape(best.label)}, {percent(best.score)}).")
    else:
        lines.append(f"Looks like {bold(best.label)} ({percent(best.score)}).")
    lines += [f"{i}. {escape(item.label)}: {_tenths(item.score)}" for i, item in enumerate(result.labels, 1)]
    note = f"{result.model} · labels: {source}"
    if result.taught:
        lines.append(f"Taught from examples: {escape(', '.join(result.taught))}.")
    if result.meaningless:
        note += " · random test model: meaningless"
        lines.append(f"⚠ {escape(result.model)} is a random test model; these answers mean nothing.")
    lines.append(italic(f"{result.model}, labels: {source}"))
    return "\n".join(lines), note


def _tenths(score: float) -> str:
    return "<0.1%" if 0 < score < 0.001 else f"{score:.1%}"


@command
async def whatis(
    ctx,
    image: Annotated[Attachment, "the picture to classify"],
    labels: Annotated[str, "labels separated by commas, or a saved label set's name"] = "",
    top: Annotated[int, f"how many guesses to show (1-{MAX_TOP})"] = 0,
    explain: Annotated[bool, "also show where in the picture the top labels are (heat maps)"] = False,
) -> AsyncIterator[Reply]:
    """Say what is in a picture (CLIP zero-shot classification)."""
    label_list, source = await ctx.run_blocking(resolve_labels, ctx, labels)
    async for reply in _answer(ctx, label_list, source, top, image=image.key, title=f"What is {image.filename}?",
                               explain=explain):
        yield reply


@command
async def where(
    ctx,
    picture: Annotated[str, "the picture of an earlier /whatis answer (its Where? button)"],
) -> AsyncIterator[Reply]:
    """Show where in a picture /whatis sees its top labels: the Where? button of an answer."""
    asked = await ctx.run_blocking(ctx.store.get, _KEPT + picture.strip())
    if not asked:
        raise UserError("That picture is no longer kept (Where? works for a day); run /whatis again with explain: yes.")
    async for reply in _answer(ctx, asked["labels"], asked["source"], asked["top"], picture=picture.strip(),
                               title="Where?", explain=True):
        yield reply


async def _answer(ctx: "CommandContext", label_list: list[str] | None, source: str, top: int, *, title: str,
                  explain: bool, image: str | None = None, picture: str | None = None) -> AsyncIterator[Reply]:
    """Run the classification and answer it: text, chart, heat maps when explained, the Where?
    button when not."""
    config = ctx.plugin_settings("whatis")
    top = top or config.top
    if label_list is not None:
        top = min(top, len(label_list))
    examples = await ctx.run_blocking(_examples, ctx, label_list)
    keep = bool(image) and not explain and config.where_keep_s > 0
    result: Classification | None = None
    async for update in classify_updates(ctx.engine, image, label_list, top, explain=explain, keep=keep,
                                         picture=picture, examples=examples):
        if isinstance(update, Reply):
            yield update  # "preparing ImageNet-1k labels: 35%" while a label matrix is built
        else:
            result = update
    if result is None:
        raise RuntimeError("the classification job ended without a result")
    text, note = format_answer(result, source)
    chart = await ctx.run_blocking(render_chart, result.labels, title=title, note=note)
    images = [Image(chart, "whatis.png", "label probabilities")]
    data = {"model": result.model, "labels": [item.to_json() for item in result.labels], "unsure": result.unsure}
    if explain:
        maps = await ctx.run_blocking(_heatmaps, ctx.engine.blobs, result)
        images += maps
        data["explain"] = [{"label": e.label, "heatmap": m.filename} for e, m in zip(result.explain, maps)]
        text += "\n" + f"Where? heat maps ({result.method}) for: {escape(', '.join(e.label for e in result.explain))}."
    actions: tuple[Action, ...] = ()
    if result.picture:
        await ctx.run_blocking(lambda: ctx.store.set(_KEPT + result.picture, {
            "labels": label_list, "source": source, "top": top}, ttl=config.where_keep_s))
        actions = (Action("Where?", "where", {"picture": result.picture}),)
    yield Reply(text=text, images=tuple(images), final=True, data=data, actions=actions)


def _examples(ctx: "CommandContext", label_list: list[str] | None) -> dict | None:
    if label_list is None:
        return None
    sets = LabelSets(ctx.store, ctx.request.platform, ctx.request.channel_id)
    return sets.examples_for(label_list) or None


def _heatmaps(blobs, result: Classification) -> list[Image]:
    """The heat-map PNGs the job stored, as reply images (their blobs go: the reply has them)."""
    maps = [Image(blobs.get(e.heatmap), f"whatis-where-{i}.png", f"where: {e.label}")
            for i, e in enumerate(result.explain, 1)]
    discard(blobs, [e.heatmap for e in result.explain], "heat maps delivered")
    return maps


@command
async def labels(
    ctx,
    action: Annotated[Literal["set", "show", "clear", "teach"], "what to do"],
    labels: Annotated[str, "for set: labels separated by commas"] = "",
    name: Annotated[str, "the label set's name (default: the channel's default set); teach: the new label"] = "",
    images: Annotated[list[Attachment], f"teach: 1-{MAX_EXAMPLES} example pictures"] = (),
    examples: Annotated[str, "teach: messages whose pictures are examples (links or CHANNEL/MESSAGE)"] = "",
    into: Annotated[str, "teach: the label set the label joins (default: the channel's default set)"] = "",
) -> Reply:
    """Save, show, clear or teach this channel's label sets for /whatis (changing them is for admins)."""
    sets = LabelSets(ctx.store, ctx.request.platform, ctx.request.channel_id)
    if action != "set" and labels and not name:
        name = labels  # `/labels clear pets` names the set positionally
    if action == "show":
        return Reply(text=await ctx.run_blocking(_show, sets, name), ephemeral=True,
                     data={"sets": await ctx.run_blocking(sets.all)})
    if not ctx.request.is_admin:
        raise UserError("Only admins can change this channel's label sets.")
    if action == "teach":
        return await _teach(ctx, sets, name, list(images), examples, into or DEFAULT_SET)
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


async def _teach(ctx: "CommandContext", sets: LabelSets, label: str, images: list[Attachment], examples: str,
                 set_name: str) -> Reply:
    label = " ".join(label.split())
    if not label:
        raise UserError(f"Name the label to teach: {code('/labels teach mascot')} with example pictures attached.")
    if len(label) > MAX_LABEL_CHARS:
        raise UserError(f"The label '{escape(label[:40])}…' is too long; keep it under {MAX_LABEL_CHARS} characters.")
    if "," in label or ";" in label:
        raise UserError("A taught label is one label: no commas.")
    check_set_name(set_name)
    messages = parse_message_refs(examples)
    if not 1 <= len(images) + len(messages) <= MAX_EXAMPLES:
        raise UserError(f"Teaching '{escape(label)}' needs 1 to {MAX_EXAMPLES} example pictures: attach them "
                        f"or give messages with {code('examples: LINK')}.")
    request = ctx.request
    channels = None if request.readable_channels is None else sorted(request.readable_channels)
    taught = Taught.from_json(await ctx.engine.run(TEACH_TASK, {
        "images": [a.key for a in images], "messages": messages, "space": request.space_id, "channels": channels,
        "private": None if channels is None else sorted(request.private_scopes)}, queue="gpu"))
    labels = await ctx.run_blocking(sets.teach, set_name, label, taught.model, list(taught.vectors))
    n = len(taught.vectors)
    text = f"Taught '{escape(label)}' from {n} example{'s' * (n != 1)}; it is in the label set '{escape(set_name)}'"
    text += f" ({len(labels)} labels)." if len(labels) > 1 else (
        f", which needs one more label for /whatis: {code('/labels set ...')} first, then teach.")
    if taught.skipped:
        text += " Left out: " + escape("; ".join(taught.skipped)) + "."
    return Reply(text=text, data={"set": set_name, "label": label, "examples": n, "labels": labels,
                                  "skipped": list(taught.skipped)})


_DISCORD_LINK = re.compile(r"^https://(?:\w+\.)?discord(?:app)?\.com/channels/[^/]+/(\d+)/(\d+)$")
_SLACK_LINK = re.compile(r"^https://[^/]+\.slack\.com/archives/(\w+)/p(\d{7,})(?:\?.*)?$")


def parse_message_refs(text: str) -> list[dict]:
    """Messages named by Discord or Slack links, CHANNEL/MESSAGE or MESSAGE (this channel),
    separated by spaces or commas: [{"channel_id", "message_id"}] (channel None: any)."""
    refs = []
    for part in re.split(r"[\s,]+", text.strip()):
        if not part:
            continue
        if found := _DISCORD_LINK.match(part):
            # Message ids are unique on Discord, and a thread's link names the thread, not the
            # channel the index files it under: look the message up by its id alone.
            refs.append({"channel_id": None, "message_id": found[2]})
        elif found := _SLACK_LINK.match(part):
            digits = found[2]
            refs.append({"channel_id": found[1], "message_id": f"{digits[:-6]}.{digits[-6:]}"})
        elif "://" in part:
            raise UserError(f"I can't read that message link: {part[:80]} (use a Discord or Slack message link).")
        else:
            channel, _, message = part.rpartition("/")
            refs.append({"channel_id": channel or None, "message_id": message})
    return refs


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
    return [whatis, where, labels]


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
