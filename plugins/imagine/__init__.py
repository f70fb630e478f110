"""/imagine: VQGAN+CLIP generation, with live progress, buttons, and jobs that survive restarts.

This module is the light part (command, handler, reply rendering; no torch). The worker imports
`plugins.imagine.tasks`, which runs `plugins.imagine.pipeline`. Following the job is
`bot.longjob`'s work; this module only says what to submit and how the result reads.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Literal, get_args

from bot import longjob
from bot.commands import Action, Attachment, Image, Reply, command
from bot.hookspecs import hookimpl
from bot.markup import bold, code, escape
from engine.errors import UserError
from engine.safety import Moderation, remember_owner
from engine.tasks import Queue
from plugins.imagine.moderation import moderated
from plugins.imagine.buttons import derived_actions, lineage_actions, timelapse_actions
from plugins.imagine.lineage import DERIVED, derived_size, extended
from plugins.imagine.params import finished_result, params
from plugins.imagine.plan import Asked, ImagePrompt, ImagineJob, ImagineResult, ImagineSettings, check_request
from plugins.imagine.preferences import Preferences, preferences, settings_command, with_defaults
from plugins.imagine.prompts import parse_prompts, parse_size
from plugins.imagine.timelapse import timelapse as timelapse_command, timelapse_parts

if TYPE_CHECKING:
    from bot.app import App
    from bot.dispatch import CommandContext

TASK = "imagine.generate"
QUEUE = "gpu-long"
SAME_PROMPT = "="  # `prompt: =` (or no prompt) with `from_job`: the earlier job's prompt
Mode = Literal["reroll", "vary", "continue", "init", "upscale", "zoom-out", "zoom-out-2", "pan-left", "pan-right",
               "pan-up", "pan-down"]  # the derived ones are lineage.DERIVED (a test keeps the two in step)
MODES = get_args(Mode)
_VARY_NOISE = 0.3


@command(long_running=True, menus=False)  # a picture alone is not a prompt: no "/imagine this" menu
async def imagine(
    ctx,
    prompt: Annotated[str, "what to draw; weigh parts with | and :w, e.g. `a watercolor fox:1 | blurry:-0.5`"] = "",
    steps: Annotated[int, "optimisation steps (default: from the quality preset)"] = None,
    size: Annotated[str, "picture size, e.g. 256 or 256x192 (default: from the quality preset)"] = "",
    seed: Annotated[int, "random seed: the same seed and settings draw the same picture"] = None,
    every: Annotated[int, "a snapshot every N steps"] = None,
    init: Annotated[Attachment, "a picture to start from"] = None,
    drawer: Annotated[Literal["auto", "vqgan", "pixels"], "vqgan, or pixels (CLIP only)"] = None,
    preset: Annotated[Literal["draft", "normal", "best"], "quality preset"] = None,
    from_job: Annotated[str, "an earlier /imagine job to build on (see mode)"] = "",
    mode: Annotated[Mode, "with from_job: what to do with it (upscale, zoom-out, pan-left, vary...)"] = None,
    timelapse: Annotated[bool, "also post a GIF and an MP4 of the picture taking shape"] = None,
) -> AsyncIterator[Reply]:
    """Draw a picture from a text prompt (VQGAN+CLIP), showing it take shape."""
    asked = Asked(prompt=prompt, steps=steps, size=size, seed=seed, every=every, init=init, drawer=drawer,
                  preset=preset, from_job=from_job, mode=mode)
    async for reply in launch(ctx, asked, timelapse=bool(timelapse)):
        yield reply


async def launch(ctx: "CommandContext", asked: Asked, *, image_prompts: tuple[ImagePrompt, ...] = (),
                 timelapse: bool = False) -> AsyncIterator[Reply]:
    """Check, submit and follow one generation job (/imagine's, or /blend's with its pictures)."""
    limits: ImagineSettings = ctx.plugin_settings("imagine")
    mine = await ctx.run_blocking(preferences, ctx.engine.store, ctx.request)
    run = await ctx.run_blocking(_build_request, ctx, asked, limits, mine, image_prompts)
    run = await ctx.run_blocking(moderated, ctx, run)  # the blocklist, and the channel's safety policy
    if timelapse:  # made at the end, by whoever delivers it (a restarted bot too): the limit goes along
        run = dataclasses.replace(run, timelapse=True, upload_limit=ctx.request.upload_limit)
    label = f"{_VERBS.get(run.mode or '', 'Imagining')} {_short(_what(run.prompt, run.image_prompts))}"
    job_id = await longjob.submit(ctx, TASK, run.to_json(), queue=QUEUE, finish=finish_reply, label=label)
    await ctx.run_blocking(remember_owner, ctx.engine.store, job_id, Moderation.from_json(run.safety or {}))
    async for reply in longjob.follow(ctx.app, job_id):
        # /settings private: progress only for the requester (where the platform can); the picture is public
        yield dataclasses.replace(reply, ephemeral=True) if mine.private and not reply.final else reply


_VERBS = {"upscale": "Upscaling", "zoom-out": "Zooming out", "zoom-out-2": "Zooming out", "pan-left": "Panning",
          "pan-right": "Panning", "pan-up": "Panning", "pan-down": "Panning", "vary": "Varying",
          "continue": "Continuing", "blend": "Blending"}


def _what(prompt: str, image_prompts: list | tuple | None) -> str:
    """What a job draws, in words: its prompt, and how many pictures it blends."""
    if not image_prompts:
        return prompt
    pictures = f"{len(image_prompts)} pictures"
    return f"{pictures} + {prompt}" if prompt.strip() else pictures



def _build_request(ctx: "CommandContext", asked: Asked, limits: ImagineSettings, mine: Preferences,
                   image_prompts: tuple[ImagePrompt, ...] = ()) -> ImagineJob:
    """The task's arguments for what was asked, checked against the caps (blocking: store reads).
    What the command leaves open comes from the earlier job (from_job), then the user's /settings."""
    if asked.mode and not asked.from_job:
        raise UserError("mode needs from_job: the /imagine job to build on.")
    asked = with_defaults(asked, mine)
    if asked.from_job:
        return _from_job(ctx, asked, limits)
    if asked.prompt.strip() == SAME_PROMPT:
        raise UserError(f"`prompt: {SAME_PROMPT}` means the prompt of from_job; give a prompt or a from_job.")
    return _fresh(asked, limits, image_prompts)


def _fresh(asked: Asked, limits: ImagineSettings, image_prompts: tuple[ImagePrompt, ...] = ()) -> ImagineJob:
    if asked.prompt.strip() or not image_prompts:  # a /blend's text is optional
        parse_prompts(asked.prompt, need_positive=not image_prompts)  # refused now, not after queueing
    size = parse_size(asked.size) if asked.size else None
    check_request(limits, size=size, steps=asked.steps, every=asked.every)
    return ImagineJob(
        prompt=asked.prompt.strip(), seed=asked.seed if asked.seed is not None else secrets.randbelow(2**31),
        quality=asked.preset, steps=asked.steps, every=asked.every, drawer=asked.drawer or limits.drawer,
        width=size[0] if size else None, height=size[1] if size else None,
        init=asked.init.key if asked.init is not None else None,
        image_prompts=[p.to_json() for p in image_prompts] or None,
        mode="blend" if image_prompts else None)


def _from_job(ctx: "CommandContext", asked: Asked, limits: ImagineSettings) -> ImagineJob:
    """reroll (new seed), vary (final latent + noise), continue (+steps from the final state),
    init (the final picture as the init image), upscale / zoom-out / pan (a bigger canvas from the
    final latent, `plugins.imagine.lineage`): the earlier job's settings unless overridden."""
    earlier = _finished(ctx, asked.from_job)
    mode = asked.mode or "reroll"
    prompt = earlier.prompt if asked.prompt.strip() in ("", SAME_PROMPT) else asked.prompt
    derived = mode in DERIVED
    if derived and asked.drawer and asked.drawer not in ("auto", earlier.drawer):
        raise UserError(f"{mode} keeps the drawer of the picture it starts from ({earlier.drawer}).")
    size = asked.size or earlier.size
    if derived:
        width, height = derived_size(mode, earlier.width, earlier.height)
        if max(width, height) > limits.max_size:
            raise UserError(f"{mode} would make {earlier.size} into {width}x{height}; the largest side allowed here "
                            f"is {limits.max_size} px.")
        size = f"{width}x{height}"
    merged = dataclasses.replace(
        asked, prompt=prompt, mode=None, from_job="", size=size,
        drawer=earlier.drawer if derived else asked.drawer or earlier.drawer,
        steps=asked.steps or (max(1, earlier.steps // 2) if derived else earlier.steps),  # continue: this many more
        every=asked.every or earlier.every, preset=asked.preset or earlier.quality,
        seed=earlier.seed if mode == "continue" or (derived and asked.seed is None) else asked.seed)
    pictures = _own_copies(ctx, earlier.image_prompts, limits)
    job = dataclasses.replace(_fresh(merged, limits, pictures), parent=earlier.job_id or asked.from_job,
                              mode=mode, lineage=extended(earlier.lineage, earlier))
    if mode == "continue" and earlier.steps + (job.steps or 0) > limits.max_steps:
        raise UserError(f"That would make {earlier.steps + (job.steps or 0)} steps; the most is {limits.max_steps}.")
    if mode == "continue" or derived:
        return dataclasses.replace(job, start={"mode": mode, "state": earlier.state})
    if mode == "vary":
        return dataclasses.replace(job, start={"mode": "vary", "state": earlier.state, "noise": _VARY_NOISE})
    if mode == "init":
        return dataclasses.replace(job, init=earlier.final)
    return job


def _own_copies(ctx: "CommandContext", pictures: tuple[ImagePrompt, ...],
                limits: ImagineSettings) -> tuple[ImagePrompt, ...]:
    """A blend's embeddings, copied for the job built on it: a job's Delete removes every blob its
    result names, and must not take its parent's or siblings' pictures along."""
    blobs = ctx.engine.blobs
    return tuple(dataclasses.replace(p, key=blobs.put(blobs.get(p.key), ttl=limits.state_ttl)) for p in pictures)


def _finished(ctx: "CommandContext", job_id: str) -> ImagineResult:
    """The result of an earlier, finished /imagine job, or one clear error."""
    earlier = finished_result(ctx.engine.job(job_id.strip()))
    if earlier is None:
        raise UserError("I can't find that finished /imagine job (it may have expired); start a new one.")
    return earlier


def finish_reply(app: "App", raw: dict) -> Reply:
    """The final reply for a finished job's result (its JSON, as the job record keeps it; blocking:
    reads the picture from the blob store). Also used by a restarted bot for jobs that finished
    while it was away."""
    result = ImagineResult.from_json(raw)
    final = app.face.blobs.get(result.final)
    losses = list(result.loss)
    lines = [
        f"{bold(result.prompt)}" if result.prompt else bold(f"A blend of {len(result.image_prompts)} pictures"),
        f"seed {code(str(result.seed))} · {result.steps} steps · {result.size} · {result.drawer} · "
        f"{result.cutouts} cutouts",
    ]
    if result.parent:
        lines.append(f"{escape(result.mode or 'from')} of job {code(result.parent)}")
    if result.image_prompts:
        lines.append("blending " + ", ".join(f"{escape(p.source or 'a picture')} ({p.weight:g})"
                                            for p in result.image_prompts))
    if losses:
        lines.append(f"loss {losses[0]:.4f} → {losses[-1]:.4f}")
    if result.meaningless:
        lines.append(f"⚠ {escape(result.model)} has random test weights: this picture means nothing.")
    if result.flagged:
        lines.append(f"⚠ Blurred: it looked too much like {bold(escape(result.flagged))} (rule: "
                     f"{escape(result.flagged)}).")
    data = {
        "seed": result.seed, "steps": result.steps, "size": result.size, "final": "final.png",
        "snapshots": [s.filename for s in result.snapshots], "loss": losses,
        "job": result.job_id, "parent": result.parent or None,
    }
    if result.flagged:
        data["flagged"] = result.flagged
    if result.image_prompts:
        data["pictures"] = [{"source": p.source, "weight": p.weight} for p in result.image_prompts]
    images = (Image(final, "final.png", result.prompt, spoiler=bool(result.flagged)),)
    limits = app.plugin_settings("imagine")
    if result.timelapse:
        images += _with_timelapse(app, result, limits, lines, data)
    actions = _actions(result, limits) if result.job_id else ()
    return Reply(text="\n".join(lines), images=images, final=True, data=data, actions=actions)


def _with_timelapse(app: "App", result: ImagineResult, limits: ImagineSettings, lines: list, data: dict) -> tuple:
    """`timelapse: yes`: the GIF and MP4 for the final reply (their lines and data added), or a line
    saying why there are none: the picture is delivered either way."""
    try:
        files, made, notes = timelapse_parts(app.face.blobs, result, result.upload_limit or None, limits)
    except UserError as exc:
        lines.append(f"No timelapse: {escape(str(exc))}")
        return ()
    lines.extend(notes)
    data["timelapse"] = made
    return files


def _actions(result: ImagineResult, limits: ImagineSettings) -> tuple[Action, ...]:
    """Every button of a final reply, in the order they show (Params and Delete last)."""
    def act(label: str, mode: str, style: str = "secondary") -> Action:
        return Action(label, "imagine", {"from_job": result.job_id, "mode": mode}, style=style)

    return (act("Reroll", "reroll", "primary"), act("Variations", "vary"), act("Continue", "continue"),
            act("Use as init", "init"), *derived_actions(result, limits), *timelapse_actions(result),
            *lineage_actions(result.job_id))


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@hookimpl
def clipbot_commands():
    from plugins.imagine.blend import blend

    return [imagine, blend, params, settings_command, timelapse_command]


@hookimpl
def clipbot_task_modules():
    return ["plugins.imagine.tasks", "plugins.imagine.blend_tasks"]


@hookimpl
def clipbot_settings():
    return ImagineSettings


@hookimpl
def clipbot_queues():
    return [Queue(QUEUE, "long GPU jobs (/imagine: minutes each), kept apart from quick work")]
