"""/imagine engine task (heavy: torch). Runs the pipeline step by step, checkpointing and reporting.

- Every `checkpoint_every` steps the run's whole state (latents, Adam, RNG, losses) is saved with
  `job.save_checkpoint`; a redelivered job (its worker died) resumes from the last one.
- Progress leaves through the engine's throttled progress (a background thread): the loop only
  hands over data, so a slow Redis or chat platform never slows the GPU.
- Cancel is checked before every step.
- Timelapse frames (`plugins.imagine.timelapse`): a low-resolution copy of the picture at the start,
  every K steps and at the end, kept in the checkpoint's `extra` (a resumed run has the frames it
  had) and stored as one blob beside the end state.
- Safety (`engine.safety.check`): unless the channel allows, the prompt's text embedding is
  checked before the first step, and every snapshot and the final picture before it is stored:
  blurred on a match (the result says which concept), or the job stops, as the policy says.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from engine.errors import JobCancelled, UserError
from engine.images import decode_image
from engine.models import clip_for, vqgan_for
from engine.models.vqgan import vqgan_available
from engine.observe import imagine_step
from engine.progress import ThrottledProgress
from engine.safety import AuditEntry, AuditLog, Moderation, safety_settings
from engine.safety.check import Match, PictureGuard
from engine.settings import EngineSettings
from engine.tasks import JobContext, task
from plugins.imagine import TASK, QUEUE, plan
from plugins.imagine import derive, pipeline, timelapse
from plugins.imagine.blend_tasks import vector_of
from plugins.imagine.lineage import DERIVED, Ancestor
from plugins.imagine.moderation import positive_texts
from plugins.imagine.prompts import parse_prompts

log = logging.getLogger(__name__)


@task(TASK, queue=QUEUE)
def generate(job: JobContext, **kwargs: Any) -> plan.ImagineResult:
    """The JSON kwargs back into a typed `plan.ImagineJob` (the one place they are decoded)."""
    return _generate(job, plan.ImagineJob.from_json(kwargs))


def _generate(job: JobContext, ask: plan.ImagineJob) -> plan.ImagineResult:
    prompt, seed, quality, steps, every, init = ask.prompt, ask.seed, ask.quality, ask.steps, ask.every, ask.init
    width, height, drawer, start = ask.width, ask.height, ask.drawer, ask.start
    limits: plan.ImagineSettings = job.plugin_settings("imagine")
    settings = job.settings
    # a /blend's text is optional, and may only push away: its pictures pull
    prompts = parse_prompts(prompt, need_positive=not ask.image_prompts) if prompt.strip() or not ask.image_prompts \
        else []
    size = (width, height) if width and height else None
    plan.check_request(limits, size=size, steps=steps, every=every)
    clip = clip_for(settings)
    _check_token_length(clip, prompts)
    guard = _guard(job, ask, clip)
    if guard is not None:
        guard.check_prompt(positive_texts(prompt))
    drawer = _pick_drawer(drawer, settings)
    vqgan = vqgan_for(settings) if drawer == "vqgan" else None
    device_class = "gpu" if clip.device.type == "cuda" else "cpu"
    run_plan = plan.resolve(limits, device_class, quality=quality, size=size, steps=steps, every=every)
    init_image = _image(job, init, max(run_plan["width"], run_plan["height"])) if init else None
    generation = pipeline.build_generation(
        clip, vqgan, prompts=prompts, drawer=drawer, width=run_plan["width"], height=run_plan["height"], seed=seed,
        cutouts=run_plan["cutouts"], cut_pow=limits.cut_pow, augment=ask.augment, lr=limits.learning_rate,
        init=init_image, image_targets=_image_targets(job, clip, ask.image_prompts or ()),
    )
    extra = _restore(job, generation, start)
    total = generation.step_done + run_plan["steps"] if not extra.get("resumed") else extra["total"]
    extra["total"] = total
    width, height = generation.drawer.width, generation.drawer.height
    reporter = job.throttled_progress(extra.get("snapshots", []))
    frames = _Frames(extra, generation.step_done, total, limits)
    try:
        # A first picture at once (the start, or where a resumed run stands), before any step.
        shown = _snapshot(reporter, guard, generation, total, preview=True)
        if not extra.get("resumed"):
            frames.keep(generation.step_done, shown)
        _loop(job, generation, total, run_plan["every"], limits.checkpoint_every, reporter, extra, guard, frames)
    finally:
        reporter.close()
    frames_key = job.blobs.put(timelapse.pack(frames.kept), ttl=limits.state_ttl) if frames.kept else ""
    state_key = job.blobs.put(generation.state_bytes(), ttl=limits.state_ttl)
    final_png, _ = _screen(guard, generation.png(), total)
    final_key = job.blobs.put(final_png, ttl=limits.state_ttl)
    job.delete_checkpoint()
    meaningless = bool(clip.meaningless or (vqgan is not None and vqgan.meaningless))
    return plan.ImagineResult(
        job_id=job.job_id, prompt=prompt, seed=seed, steps=total, every=run_plan["every"], size=f"{width}x{height}",
        width=width, height=height, drawer=drawer, cutouts=run_plan["cutouts"],
        quality=quality or limits.quality, model=vqgan.spec if vqgan else f"pixels + {clip.spec}",
        clip=clip.spec, meaningless=meaningless, final=final_key, state=state_key,
        snapshots=tuple(plan.Snapshot(**s) for s in reporter.snapshots()),
        loss=tuple(round(v, 6) for v in generation.losses),
        runs=tuple(plan.Attempt(**r) for r in extra["runs"]), seconds_per_step=reporter.seconds_per_step,
        flagged=guard.flagged.name if guard is not None and guard.flagged is not None else "",
        parent=ask.parent or "", mode=ask.mode or "", lineage=tuple(map(Ancestor.from_json, ask.lineage or ())),
        frames=frames_key, frame_count=len(frames.kept), timelapse=bool(ask.timelapse),
        upload_limit=ask.upload_limit or 0,
        image_prompts=tuple(map(plan.ImagePrompt.from_json, ask.image_prompts or ())),
    )


class _Frames:
    """The run's timelapse frames: `{"step", "png"}` (low resolution), in `extra["frames"]` so a
    checkpoint carries them. The interval is fixed when the run starts (a resumed run keeps it)."""

    def __init__(self, extra: dict, start: int, total: int, limits: plan.ImagineSettings) -> None:
        self.kept: list[dict] = extra.setdefault("frames", [])
        if "frame_every" not in extra:
            extra["frame_every"], extra["frame_from"] = timelapse.frame_interval(
                total - start, limits.timelapse_every, limits.timelapse_frames), start
        self.every, self.start, self.total = extra["frame_every"], extra["frame_from"], total
        self.side = limits.timelapse_side

    def due(self, step: int) -> bool:
        return (step - self.start) % self.every == 0 or step == self.total

    def has(self, step: int) -> bool:
        return bool(self.kept) and self.kept[-1]["step"] == step

    def keep(self, step: int, png: bytes) -> None:
        if not self.has(step):
            self.kept.append({"step": step, "png": timelapse.low_res(png, self.side)})


def _image_targets(job: JobContext, clip: Any, image_prompts: Any) -> list[pipeline.Target]:
    """/blend's pictures: their stored embeddings, made by this very model, weighted."""
    targets = []
    for raw in image_prompts:
        picture = plan.ImagePrompt.from_json(raw)
        if picture.model != clip.fingerprint:
            raise UserError("These pictures were read with another CLIP model than this worker's; run /blend again.")
        targets.append(pipeline.embedding_target(clip, vector_of(job.blobs.get(picture.key)), picture.weight))
    return targets


def _loop(job: JobContext, generation: pipeline.Generation, total: int, every: int, checkpoint_every: int,
          reporter: ThrottledProgress, extra: dict, guard: PictureGuard | None, frames: _Frames) -> None:
    while generation.step_done < total:
        if job.cancelled():  # every step: a cancel stops the run within one step
            raise JobCancelled("The job was cancelled.")
        # A frame due at this step and not kept yet (no snapshot showed it) comes from this step's
        # forward pass, which draws the picture as it stands anyway: no decode of its own.
        before = generation.step_done
        capture = frames.due(before) and not frames.has(before)
        started = time.perf_counter()
        loss = generation.step(capture=capture)
        step = generation.step_done
        took = time.perf_counter() - started
        reporter.step_took(took)
        imagine_step(took)
        if capture:
            frames.keep(before, _screen(guard, pipeline.to_png(generation.captured), before)[0])
        if step % every == 0 or step == total:
            shown = _snapshot(reporter, guard, generation, total, loss=round(loss, 6))
            if frames.due(step):  # the picture as the snapshot showed it (screened)
                frames.keep(step, shown)
        else:
            reporter.update(step, total, loss=round(loss, 6))
        if step % checkpoint_every == 0 and step < total:
            # The checkpoint names the snapshots sent so far; it waits (like the checkpoint's own
            # write) for the reporter to send the pending ones, so none is lost on a resume.
            reporter.flush()
            extra["snapshots"] = reporter.snapshots()
            job.save_checkpoint(generation.state_bytes(extra=extra), step=step)


def _snapshot(reporter: ThrottledProgress, guard: PictureGuard | None, generation: pipeline.Generation,
              total: int, **data: Any) -> bytes:
    """Hand the picture as it stands to the reporter, screened first (blurred, or the job stops);
    returns the PNG handed over."""
    png, match = _screen(guard, generation.png(), generation.step_done)
    if match is not None:
        data["flagged"] = match.name  # the progress reply shows it behind a spoiler
    reporter.snapshot(generation.step_done, total, png, **data)
    return png


def _screen(guard: PictureGuard | None, png: bytes, step: int) -> tuple[bytes, Match | None]:
    """A picture of the run as the safety checks let it be shown (blurred on a match, or the job
    stops), and the match; as it is where the channel checks nothing."""
    return guard.screen(png, step) if guard is not None else (png, None)


def _guard(job: JobContext, ask: plan.ImagineJob, clip: Any) -> PictureGuard | None:
    """This job's safety checks, or None where its channel allows everything (or nothing is set)."""
    moderation = Moderation.from_json(ask.safety or {})  # a job from before safety: the default policy
    if moderation.policy == "allow":
        return None
    settings = safety_settings(job)
    pictures = settings.output_concepts(meaningless=clip.meaningless)
    prompts = settings.text_concepts(meaningless=clip.meaningless)
    if not pictures and not prompts:
        return None
    audit = AuditLog(job.store, keep=settings.audit_keep)

    def hit(action: str, match: Match, step: int | None) -> None:
        where = f"step {step}, " if step is not None else ""
        audit.record(moderation.platform, moderation.space, AuditEntry(
            action=action, rule=match.name, user=moderation.user, channel=moderation.channel, job_id=job.job_id,
            detail=f"{'prompt' if step is None else 'picture'} ({where}cosine {match.cosine} >= {match.threshold})"))

    return PictureGuard(clip, pictures=pictures, prompts=prompts, policy=moderation.policy,
                        blur_share=settings.blur_radius, hit=hit)


def _restore(job: JobContext, generation: pipeline.Generation, start: dict | None) -> dict:
    """Resume from this job's checkpoint, or start from an earlier job's final state; returns the
    run's bookkeeping (`runs`: where each attempt started, for the record). A derived run (upscale,
    zoom, pan) lays the earlier latent out first, resumed or not: its frozen region is set up here."""
    if start and start.get("mode") in DERIVED:
        derive.start_from(generation, start["mode"], job.blobs.get(start["state"]))
    saved = job.load_checkpoint()
    if saved is not None:
        extra = generation.load_state_bytes(saved)
        extra["resumed"] = True
        extra["runs"].append({"attempt": job.attempt, "from_step": generation.step_done})
        return extra
    base = 0
    if start:
        mode = start.get("mode")
        data = job.blobs.get(start["state"])
        if mode == "continue":
            generation.load_state_bytes(data)
            base = generation.step_done
        elif mode == "vary":
            generation.load_state_bytes(data, with_optimizer=False)
            pipeline.add_noise(generation, float(start.get("noise", 0.3)))
        elif mode not in DERIVED:
            raise UserError(f"Unknown start mode {mode!r}.")
    return {"runs": [{"attempt": job.attempt, "from_step": base}], "base": base}


def _pick_drawer(drawer: str, settings: EngineSettings) -> str:
    if drawer == "auto":
        return "vqgan" if vqgan_available(settings.vqgan_model, settings.models_dir) else "pixels"
    return drawer


def _check_token_length(clip: Any, prompts: list) -> None:
    for prompt in prompts:
        if clip.too_long(prompt.text):  # the tokenizer cut it (any tokenizer: its own padding id)
            raise UserError(f"The prompt '{prompt.text[:40]}…' is too long: CLIP reads at most "
                            f"{clip.context_length} tokens. Shorten it.")


def _image(job: JobContext, key: str, side: int) -> Any:
    """The init picture, reduced where it is far bigger than the `side`-pixel canvas it starts."""
    settings = job.settings
    return decode_image(job.blobs.get(key), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                        for_side=side)
