"""Long jobs in a conversation: the one place that turns a job's events into chat replies.

A plugin submits with `submit(ctx, task, kwargs, queue=..., finish=fn)` and returns
`follow(ctx.app, job_id)`: queue position and ETA while waiting, throttled progress replies
(step/total, ETA, snapshot images, a Cancel button) while running, and `finish(app, result)`'s
reply at the end. Where a job answers (platform + the request's `conversation`) is stored with
it, so a restarted bot picks it up again with `resume_jobs(app, platform)`: nothing is lost.
`finish` is stored by name (`module:function`), so it must be a module-level function.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Callable

from bot.commands import Action, Image, Reply, command
from bot.markup import bold, code, escape
from engine.errors import BackendUnavailable, JobCancelled, UserError

if TYPE_CHECKING:
    from bot.app import App
    from bot.commands import Request
    from bot.dispatch import CommandContext

_ENTRY = "clipbot:longjob:"
_SECONDS = "clipbot:longjob-seconds:"  # recent run time per task, for queue ETAs
ENTRY_TTL = 7 * 86400
THROTTLE_S = 2.0  # fewest seconds between two text-only progress edits
_WAIT_REFRESH_S = 5.0  # how often the queue position is refreshed while waiting
RETRY_S = 3.0  # while the engine is unreachable at start, how often resuming tries again (workers: 3 s too)

Finish = Callable[["App", dict], Reply]  # (app, the job's result as JSON) -> the final reply


async def submit(ctx: "CommandContext", task: str, kwargs: dict, *, queue: str, finish: Finish, label: str = "") -> str:
    """Queue `task` and remember where it answers; returns the job id. `label` is plain text
    (e.g. "Imagining a fox"): progress replies show it bold, escaped."""
    engine = ctx.app.engine
    request = ctx.request
    conversation = request.conversation
    requester = ctx.engine.requester
    if requester is not None:  # a refusal opens no thread: check the limits before anything is posted
        await ctx.run_blocking(engine.quotas.admit, requester, long=queue in engine.settings.long_queues)
    if request.open_conversation is not None:  # the thread or parent message the job answers in
        conversation = await request.open_conversation()
    job_id = await ctx.run_blocking(engine.submit, task, kwargs, queue=queue, requester=requester)
    entry = {
        "job_id": job_id, "task": task, "queue": queue, "label": label, "finish": _name_of(finish),
        "platform": request.platform, "conversation": conversation or {"channel": request.channel_id},
        "user_id": request.user_id, "channel_id": request.channel_id, "space_id": request.space_id,
        "created": time.time(),
    }
    await ctx.run_blocking(engine.store.set, _ENTRY + job_id, entry, ttl=ENTRY_TTL)
    return job_id


def entry(app: "App", job_id: str) -> dict | None:
    """What was stored about a long job when it was submitted (blocking)."""
    return app.engine.store.get(_ENTRY + job_id)


def cancel_action(job_id: str) -> Action:
    return Action("Cancel", "cancel", {"job": job_id}, style="danger")


async def follow(app: "App", job_id: str, *, resumed: bool = False) -> AsyncIterator[Reply]:
    """The replies for one long job, ending with its final reply (or an error / cancelled one)."""
    info = await asyncio.to_thread(entry, app, job_id)
    if info is None:
        raise UserError("I no longer know that job (it finished long ago or never existed).")
    label = info.get("label") or "Working"
    inbox: asyncio.Queue = asyncio.Queue()
    # A reader task feeds the events in; waiting on the inbox (unlike on the event stream itself)
    # may time out safely, to refresh the queue position.
    reader = asyncio.create_task(_read_events(app, job_id, resumed, inbox))
    yield Reply(text=f"{bold(label)}: queued", progress=0.0, actions=(cancel_action(job_id),))
    try:
        async for reply in _replies(app, info, label, inbox):
            yield reply
            if reply.final:
                break
    except UserError:
        await _forget(app, job_id)  # failed, or no worker: the conversation has its answer
        raise
    else:
        await _forget(app, job_id)  # delivered (or cancelled)
    finally:
        # A stopped follower (the bot shutting down) keeps the entry: the next start resumes it.
        reader.cancel()


async def _replies(app: "App", info: dict, label: str, inbox: asyncio.Queue) -> AsyncIterator[Reply]:
    job_id = info["job_id"]
    finish = _load(info["finish"])
    running = False
    last_text_at = 0.0
    waiting_text = ""
    while True:
        try:
            kind, event = await asyncio.wait_for(inbox.get(), timeout=None if running else _WAIT_REFRESH_S)
        except asyncio.TimeoutError:
            waiting = await _waiting_reply(app, info, label)
            if waiting.text != waiting_text:  # only when the queue position (or its ETA) moved
                waiting_text = waiting.text
                yield waiting
            continue
        if kind == "error":
            if isinstance(event, JobCancelled):
                yield Reply(text=f"{bold(label)}: cancelled.", final=True)
                return
            raise event
        if kind == "end":
            return
        running = running or event.kind in ("started", "progress")
        if event.kind == "succeeded":
            await asyncio.to_thread(_remember_duration, app, info)
            yield await asyncio.to_thread(finish, app, event.data.get("result") or {})
            return
        if event.kind != "progress":
            continue
        if event.data.get("snapshot") is None and time.monotonic() - last_text_at < THROTTLE_S:
            continue  # a text-only update soon after the last one: skip it (throttle)
        last_text_at = time.monotonic()
        yield await _progress_reply(app, job_id, label, event.data)


async def _forget(app: "App", job_id: str) -> None:
    await asyncio.to_thread(app.engine.store.delete, _ENTRY + job_id)


async def _read_events(app: "App", job_id: str, resumed: bool, inbox: asyncio.Queue) -> None:
    record = await asyncio.to_thread(app.engine.book.get, job_id) if resumed else None
    # Long jobs bound themselves (their step caps): no job timeout. A resumed job that already
    # started may have had its early events trimmed, so it gets no queue timeout either.
    queue_timeout = math.inf if record is not None and record.state != "queued" else None
    try:
        async for event in app.engine.follow(job_id, job_timeout=math.inf, queue_timeout=queue_timeout):
            inbox.put_nowait(("event", event))
        inbox.put_nowait(("end", None))
    except Exception as exc:  # JobFailed, JobCancelled, WorkerUnavailable: the follower raises them
        inbox.put_nowait(("error", exc))


async def _progress_reply(app: "App", job_id: str, label: str, data: dict) -> Reply:
    step, total = int(data.get("step", 0)), int(data.get("total", 0)) or 1
    parts = [f"{bold(label)}: step {step}/{total}"]
    if data.get("eta") is not None:
        parts.append(f"about {format_seconds(float(data['eta']))} left")
    if data.get("message"):
        parts.append(str(data["message"]))
    if data.get("flagged"):
        parts.append(f"blurred (rule: {escape(str(data['flagged']))})")
    images: tuple[Image, ...] = ()
    if data.get("snapshot"):
        try:
            png = await asyncio.to_thread(app.engine.blobs.get, data["snapshot"])
            images = (Image(png, data.get("filename") or f"step-{step:04d}.png", f"step {step} of {total}",
                            spoiler=bool(data.get("flagged"))),)  # flagged: blurred by the worker
        except UserError:
            pass  # expired (a resumed, old job): the text still says where it stands
    return Reply(text=" · ".join(parts), images=images, progress=step / total, actions=(cancel_action(job_id),))


async def _waiting_reply(app: "App", info: dict, label: str) -> Reply:
    position = await asyncio.to_thread(app.engine.queue_position, info["job_id"], info["queue"])
    text = f"{bold(label)}: waiting for a worker"
    if position:
        text += f" · position {position} in the queue"
        seconds = await asyncio.to_thread(app.engine.store.get, _SECONDS + info["task"])
        if seconds:
            text += f" · starts in about {format_seconds(position * float(seconds))}"
    return Reply(text=text, progress=0.0, actions=(cancel_action(info["job_id"]),))


def _remember_duration(app: "App", info: dict) -> None:
    record = app.engine.book.get(info["job_id"])
    if record is None or not record.started_at or not record.finished_at:
        return
    took = record.finished_at - record.started_at
    previous = app.engine.store.get(_SECONDS + info["task"])
    app.engine.store.set(_SECONDS + info["task"], took if previous is None else 0.7 * previous + 0.3 * took,
                         ttl=30 * 86400)


def unfinished(app: "App", platform: str) -> list[dict]:
    """The long jobs this platform's conversations still wait for (blocking)."""
    entries = (app.engine.store.get(key) for key in app.engine.store.keys(_ENTRY))
    return sorted((e for e in entries if e and e.get("platform") == platform), key=lambda e: e["created"])


async def resume_jobs(app: "App", platform: str, *, unreachable: Callable[[str], object] | None = None,
                      retry_every: float = RETRY_S) -> AsyncIterator[tuple[dict, AsyncIterator[Reply]]]:
    """For each unfinished job of `platform`: (its conversation, its reply stream from now on).

    An adapter calls this at start and renders each stream into its conversation, as it would a
    fresh request's. Errors end a stream with an error reply instead of escaping. With the engine
    unreachable (Redis down) it raises BackendUnavailable before yielding anything; or, given
    `unreachable`, calls it once with that message and tries again every `retry_every` seconds
    (as workers do), yielding once the engine is back."""
    while True:
        try:
            pending = await asyncio.to_thread(_unfinished_records, app, platform)
            break
        except BackendUnavailable as exc:
            if unreachable is None:
                raise
            unreachable(str(exc))
            unreachable = _said  # once
            await asyncio.sleep(retry_every)
    for info, known in pending:
        if not known:
            await _forget(app, info["job_id"])
            yield info["conversation"], _lost(app, info)
            continue
        yield info["conversation"], _guarded(follow(app, info["job_id"], resumed=True))


def _said(_message: str) -> None:
    pass


def _unfinished_records(app: "App", platform: str) -> list[tuple[dict, bool]]:
    """Every read `resume_jobs` needs, at once: it fails before anything is resumed, or not at all."""
    return [(info, app.engine.book.get(info["job_id"]) is not None) for info in unfinished(app, platform)]


async def _lost(app: "App", info: dict) -> AsyncIterator[Reply]:
    """Say once, where it was asked, what became of a job whose record is gone."""
    label = bold(info.get("label") or "A job")
    if app.engine.embedded:  # its records live in the bot process: a restart lost them
        text = f"{label}: lost when clipbot restarted (the embedded engine keeps jobs in memory); please ask again."
    else:  # unfinished records stay a week: this one ended, and was forgotten, while the bot was away
        kept = format_seconds(app.engine.book.finished_ttl)
        text = (f"{label}: it ended while clipbot was away, and its result is gone (finished jobs are kept "
                f"{kept}, or Redis lost it); please ask again.")
    yield Reply(text=text, error=True, final=True)


async def _guarded(replies: AsyncIterator[Reply]) -> AsyncIterator[Reply]:
    try:
        async for reply in replies:
            yield reply
    except UserError as exc:
        yield Reply(text=str(exc), error=True, final=True)


@command
async def cancel(ctx, job: Annotated[str, "the job to stop (its Cancel button fills this in)"]) -> Reply:
    """Stop a running job (yours, or any in this server or workspace if you are an admin)."""
    info = await ctx.run_blocking(entry, ctx.app, job)
    record = await ctx.run_blocking(ctx.app.engine.book.get, job)
    if info is None and record is None:
        raise UserError(f"No such job: {code(job[:64])}.")
    if record is None or record.finished:
        raise UserError("That job is not running any more.")
    if not may_cancel(info, ctx.request):
        raise UserError("Only the person who started that job, or an admin where it was started, can cancel it.")
    if not await ctx.run_blocking(ctx.app.engine.cancel, job):
        raise UserError("That job is not running any more.")  # it ended meanwhile
    return Reply(text="Cancelling…", ephemeral=True)


def may_cancel(info: dict | None, request: "Request") -> bool:
    """The requester (same platform and user), or an admin of the space (server, workspace) the
    job was started in. A job with no long-job entry belongs to no conversation: only an admin at
    the local chat or CLI (the operator) may stop it."""
    if info is None:
        return request.is_admin and request.platform == "local"
    if info["platform"] != request.platform:
        return False
    if info["user_id"] == request.user_id:
        return True
    # Entries from before spaces were recorded (they last a week) fall back to the platform alone.
    return request.is_admin and info.get("space_id", request.space_id) == request.space_id


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _name_of(fn: Callable) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name:
        raise ValueError("finish must be a module-level function (it is stored by name)")
    return name


def _load(name: str) -> Finish:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)
