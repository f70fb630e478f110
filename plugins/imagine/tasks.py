"""/imagine engine task (heavy: torch). Runs the pipeline step by step, checkpointing and reporting.

- Every `checkpoint_every` steps the run's whole state (latents, Adam, RNG, losses) is saved with
  `job.save_checkpoint`; a redelivered job (its worker died) resumes from the last one.
- Progress leaves through a background thread: the loop only hands over data, so a slow Redis
  or chat platform never slows the GPU.
- Cancel is checked before every step.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

from engine.errors import JobCancelled, UserError
from engine.images import decode_image
from engine.models import clip_for, vqgan_for
from engine.models.vqgan import vqgan_available
from engine.tasks import JobContext, task
from plugins.imagine import TASK, QUEUE, plan
from plugins.imagine import pipeline
from plugins.imagine.prompts import parse_prompts

log = logging.getLogger(__name__)
_MIN_GAP_S = 0.5


@task(TASK, queue=QUEUE)
def generate(job: JobContext, prompt: str, seed: int, quality: str | None = None, width: int | None = None,
             height: int | None = None, steps: int | None = None, every: int | None = None, drawer: str = "auto",
             init: str | None = None, start: dict | None = None, augment: bool = True) -> dict:
    limits: plan.ImagineSettings = job.plugin_settings("imagine")
    settings = job.settings
    prompts = parse_prompts(prompt)
    size = (width, height) if width and height else None
    plan.check_request(limits, size=size, steps=steps, every=every)
    clip = clip_for(settings)
    _check_token_length(clip, prompts)
    drawer = _pick_drawer(drawer, settings)
    vqgan = vqgan_for(settings) if drawer == "vqgan" else None
    device_class = "gpu" if clip.device.type == "cuda" else "cpu"
    run_plan = plan.resolve(limits, device_class, quality=quality, size=size, steps=steps, every=every)
    init_image = _image(job, init, max(run_plan["width"], run_plan["height"])) if init else None
    generation = pipeline.build_generation(
        clip, vqgan, prompts=prompts, drawer=drawer, width=run_plan["width"], height=run_plan["height"], seed=seed,
        cutouts=run_plan["cutouts"], cut_pow=limits.cut_pow, augment=augment, lr=limits.learning_rate,
        init=init_image,
    )
    extra = _restore(job, generation, start)
    total = generation.step_done + run_plan["steps"] if not extra.get("resumed") else extra["total"]
    extra["total"] = total
    width, height = generation.drawer.width, generation.drawer.height
    reporter = _Reporter(job, extra.get("snapshots", []))
    try:
        # A first picture at once (the start, or where a resumed run stands), before any step.
        reporter.snapshot(generation.step_done, total, generation.png(), preview=True)
        _loop(job, generation, total, run_plan["every"], limits.checkpoint_every, reporter, extra)
    finally:
        reporter.close()
    state_key = job.blobs.put(generation.state_bytes(), ttl=limits.state_ttl)
    final_key = job.blobs.put(generation.png(), ttl=limits.state_ttl)
    job.delete_checkpoint()
    meaningless = bool(clip.meaningless or (vqgan is not None and vqgan.meaningless))
    return {
        "job_id": job.job_id, "prompt": prompt, "seed": seed, "steps": total, "every": run_plan["every"], "size": f"{width}x{height}",
        "width": width, "height": height, "drawer": drawer, "cutouts": run_plan["cutouts"],
        "quality": quality or limits.quality, "model": vqgan.spec if vqgan else f"pixels + {clip.spec}",
        "clip": clip.spec, "meaningless": meaningless, "final": final_key, "state": state_key,
        "snapshots": reporter.snapshots(), "loss": [round(v, 6) for v in generation.losses],
        "runs": extra["runs"], "seconds_per_step": reporter.seconds_per_step,
    }


def _loop(job: JobContext, generation: pipeline.Generation, total: int, every: int, checkpoint_every: int,
          reporter: "_Reporter", extra: dict) -> None:
    while generation.step_done < total:
        if job.cancelled():  # every step: a cancel stops the run within one step
            raise JobCancelled("The job was cancelled.")
        started = time.perf_counter()
        loss = generation.step()
        step = generation.step_done
        reporter.step_took(time.perf_counter() - started)
        if step % every == 0 or step == total:
            reporter.snapshot(step, total, generation.png(), loss=round(loss, 6))
        else:
            reporter.update(step, total, loss=round(loss, 6))
        if step % checkpoint_every == 0 and step < total:
            # The checkpoint names the snapshots sent so far; it waits (like the checkpoint's own
            # write) for the reporter to send the pending ones, so none is lost on a resume.
            reporter.flush()
            extra["snapshots"] = reporter.snapshots()
            job.save_checkpoint(generation.state_bytes(extra=extra), step=step)


def _restore(job: JobContext, generation: pipeline.Generation, start: dict | None) -> dict:
    """Resume from this job's checkpoint, or start from an earlier job's final state; returns the
    run's bookkeeping (`runs`: where each attempt started, for the record)."""
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
        else:
            raise UserError(f"Unknown start mode {mode!r}.")
    return {"runs": [{"attempt": job.attempt, "from_step": base}], "base": base}


def _pick_drawer(drawer: str, settings: Any) -> str:
    if drawer == "auto":
        return "vqgan" if vqgan_available(settings.vqgan_model, settings.models_dir) else "pixels"
    return drawer


def _check_token_length(clip: Any, prompts: list) -> None:
    for prompt in prompts:
        tokens = clip.tokenizer([prompt.text])
        if int(tokens[0, -1]) != 0:  # the end marker was forced into the last slot: truncated
            raise UserError(f"The prompt '{prompt.text[:40]}…' is too long: CLIP reads at most "
                            f"{tokens.shape[1]} tokens. Shorten it.")


def _image(job: JobContext, key: str, side: int) -> Any:
    """The init picture, reduced where it is far bigger than the `side`-pixel canvas it starts."""
    settings = job.settings
    return decode_image(job.blobs.get(key), max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels,
                        for_side=side)


class _Reporter:
    """Progress from a background thread. The loop only queues: plain updates coalesce (the latest
    wins), snapshots are all sent, in order. Keeps the snapshot blob keys for the result."""

    def __init__(self, job: JobContext, snapshots: list[dict]) -> None:
        self._job = job
        self._cond = threading.Condition()
        self._pending: collections.deque = collections.deque()
        self._latest: dict | None = None
        self._closed = False
        self._busy = False  # sending a batch
        self._snapshots = list(snapshots)
        self._step_times: collections.deque = collections.deque(maxlen=20)
        self._thread = threading.Thread(target=self._run, name="imagine-progress", daemon=True)
        self._thread.start()

    @property
    def seconds_per_step(self) -> float | None:
        times = list(self._step_times)[1:] or list(self._step_times)  # the first step warms caches
        return round(sum(times) / len(times), 4) if times else None

    def step_took(self, seconds: float) -> None:
        self._step_times.append(seconds)

    def update(self, step: int, total: int, **data: Any) -> None:
        with self._cond:
            self._latest = {"step": step, "total": total, **data, **self._eta(step, total)}
            self._cond.notify_all()

    def snapshot(self, step: int, total: int, png: bytes, **data: Any) -> None:
        with self._cond:
            self._pending.append({"step": step, "total": total, "png": png, **data, **self._eta(step, total)})
            self._latest = None
            self._cond.notify_all()

    def snapshots(self) -> list[dict]:
        with self._cond:
            return list(self._snapshots)

    def flush(self, timeout: float = 30) -> None:
        """Wait until every queued snapshot has been sent."""
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and not self._busy, timeout=timeout)

    def close(self, timeout: float = 30) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _eta(self, step: int, total: int) -> dict:
        per_step = self.seconds_per_step
        return {"eta": round(per_step * (total - step), 1)} if per_step is not None else {}

    def _run(self) -> None:
        sent_at = 0.0
        while True:
            with self._cond:
                # Text-only updates at most every _MIN_GAP_S (snapshots and closing go at once), so
                # fast steps don't flood the event log.
                self._cond.wait_for(lambda: self._pending or self._closed,
                                    timeout=max(0.0, sent_at + _MIN_GAP_S - time.monotonic()))
                self._cond.wait_for(lambda: self._pending or self._latest or self._closed)
                sent_at = time.monotonic()
                batch = list(self._pending) + ([self._latest] if self._latest else [])
                self._pending.clear()
                self._latest = None
                self._busy = True
                done = self._closed
            for item in batch:
                self._send(item)
            with self._cond:
                self._busy = False
                self._cond.notify_all()
            if done:
                return

    def _send(self, item: dict) -> None:
        png = item.pop("png", None)
        try:
            if png is not None:
                key = self._job.blobs.put(png)
                name = f"step-{item['step']:04d}.png"
                if not item.get("preview") or item["step"] == 0:  # the start is a snapshot; a resume's is not new
                    with self._cond:
                        self._snapshots.append({"step": item["step"], "key": key, "filename": name})
                item.update(snapshot=key, filename=name)
            self._job.engine.book.emit(self._job.job_id, "progress", message="", **item)
        except Exception:  # progress is best effort: a hiccup must not kill a long run
            log.warning("could not send /imagine progress for job %s", self._job.job_id, exc_info=True)
