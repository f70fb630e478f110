"""/search and /index: every posted picture indexed with CLIP, found again by text or image.

Light part (no torch): commands, the hooks adapters call, permissions. Pictures posted are
queued (the engine's pending queue "search", `engine.pending`) and embedded in batches by `plugins.search.tasks` on the
worker, which owns the `engine.index` ImageIndex. The requester's readable channels travel
with every query and filter inside the index: nobody sees a thumbnail, link or count from a
channel they cannot read, nor from another space.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Annotated, AsyncIterator, Literal

from pydantic import Field

from bot.commands import Action, Attachment, Image, Reply, command
from bot.config import PluginSettings
from bot.events import ChannelRemoved, ImagePosted, MessageDeleted
from bot.hookspecs import hookimpl
from bot.markup import bold, escape, italic, link
from engine.errors import UserError
from plugins.search.query import ParsedQuery, check_phrase, describe_filters, parse_query
from plugins.search.results import Hit, Indexed, IndexStats, Removed, SearchPage

if TYPE_CHECKING:
    from bot.app import App
    from bot.dispatch import CommandContext
    from engine.face import EngineFace
    import numpy as np

    from bot.commands import Request
    from engine.store import Store

log = logging.getLogger(__name__)

DRAIN, INDEX_NOW, QUERY, REMOVE, STATS, REEMBED = (
    "search.drain", "search.index_now", "search.query", "search.remove", "search.stats", "search.reembed")
MAX_TOP = 25
SAVED_SEARCH_TTL = 86400
_SAVED = "clipbot:search:saved:"
_GONE_MESSAGE = "clipbot:search:gone:"
_GONE_CHANNEL = "clipbot:search:gone-channel:"
_BACKFILL = "clipbot:search:backfill:"
_OCR_OFF = "clipbot:search:ocr-off:"
UNAPPLIED = "clipbot:search:unapplied-removals"
PENDING = "search"  # the engine pending queue of pictures waiting to be indexed
TOMBSTONE_TTL = 2 * 86400


class SearchSettings(PluginSettings):
    """/search and indexing: CLIPBOT_SEARCH_<NAME> (the index itself is CLIPBOT_INDEX_URL)."""

    top: int = Field(10, ge=1, le=MAX_TOP, description="results per page of /search")
    batch_size: int = Field(32, ge=1, le=512, description="pictures embedded per model call when indexing")
    drain_batches: int = Field(4, ge=1, description="batches one indexing job runs before queries get a turn")
    retention_days: float = Field(0, ge=0, description="forget pictures posted longer ago than this; 0 keeps all")
    backfill_page: int = Field(100, ge=1, le=1000, description="messages asked for per history page in a backfill")
    backfill_delay: float = Field(1.0, ge=0, description="seconds between history pages (platform rate limits)")
    relevance_z: float = Field(2.0, ge=0, le=10, description="text results scoring under median + z·1.4826·MAD of "
                               "the space's background of random queries' best scores are weak matches")
    duplicate_cosine: float = Field(0.95, ge=0.5, le=1.0, description="results whose embeddings have at least this "
                                    "cosine collapse into one (\"+N similar\"); 1 turns collapsing off")


# ---- indexing: what adapters tell us ------------------------------------------------------------
def event_items(event: ImagePosted) -> list[dict]:
    """One pending item per picture of a message (JSON: it crosses Redis to the worker)."""
    return [{
        "space_id": event.space_id, "channel_id": event.channel_id, "message_id": event.message_id,
        "source_id": attachment.source_id or (str(i) if len(event.attachments) > 1 else ""),
        "key": attachment.key, "author_id": event.author_id, "author_name": event.author_name,
        "posted_at": event.posted_at, "permalink": event.permalink, "thread_id": event.thread_id,
        "platform": event.platform, "private": event.private,
        "message_text": event.text, "file_name": attachment.filename,
    } for i, attachment in enumerate(event.attachments)]


def ocr_enabled(store: "Store", space_id: str) -> bool:
    """Whether pictures indexed in this space have their text read (`/index ocr on|off`; the
    global switch is CLIPBOT_OCR)."""
    return store.get(_OCR_OFF + space_id) is None


def enqueue(engine: "EngineFace", items: list[dict]) -> None:
    """Queue pictures for indexing; the first to queue while no drain job runs submits one."""
    queue = engine.pending(PENDING)
    if items and queue.push(items):
        try:
            engine.submit(DRAIN, {}, queue="gpu")
        except Exception:
            queue.abandon()  # the next post (or backfill page) tries again
            raise


@hookimpl
def clipbot_image_posted(app: "App", event: ImagePosted):
    enqueue(app.face, event_items(event))


@hookimpl
def clipbot_message_deleted(app: "App", event: MessageDeleted):
    key = f"{_GONE_MESSAGE}{event.space_id}:{event.channel_id}:{event.message_id}"
    app.face.store.set(key, list(event.source_ids), ttl=TOMBSTONE_TTL)  # for pictures still queued
    _remove(app.face, {"space": event.space_id, "message_id": event.message_id, "channel_id": event.channel_id,
                         "source_ids": list(event.source_ids)})


@hookimpl
def clipbot_channel_removed(app: "App", event: ChannelRemoved):
    app.face.store.set(f"{_GONE_CHANNEL}{event.space_id}:{event.channel_id}", time.time(), ttl=TOMBSTONE_TTL)
    app.face.store.delete(_backfill_key(event.platform, event.space_id, event.channel_id))
    _remove(app.face, {"space": event.space_id, "channel_id": event.channel_id, "whole_channel": True})


def _remove(engine: "EngineFace", removal: dict) -> None:
    """Submit a removal; with no worker online, keep it in the store for the next indexing or
    removal job, so a deletion is never lost."""
    try:
        engine.submit(REMOVE, removal, queue="gpu")
    except Exception:
        engine.store.set(UNAPPLIED, (engine.store.get(UNAPPLIED) or []) + [removal])
        raise


def is_gone(store: "Store", item: dict) -> bool:
    """Was this queued picture's message deleted, or its channel left, after it was posted?"""
    gone = store.get(f"{_GONE_MESSAGE}{item['space_id']}:{item['channel_id']}:{item['message_id']}")
    if gone is not None and (not gone or item.get("source_id") in gone):
        return True
    for place in (item["channel_id"], item.get("thread_id")):  # a thread that went is a channel that went
        left = store.get(f"{_GONE_CHANNEL}{item['space_id']}:{place}") if place else None
        if left is not None and float(item.get("posted_at") or 0) <= float(left):
            return True
    return False


# ---- /search ---------------------------------------------------------------------------------------
@command
async def search(
    ctx,
    query: Annotated[str, "what to find: words, +more -less, in:#channel or in:all, from:@user, "
                          "before:/after:YYYY-MM-DD, last week, text:\"words\""] = "",
    image: Annotated[Attachment, "find pictures like this one"] = None,
    top: Annotated[int, f"results per page (1-{MAX_TOP})"] = 0,
    similar: Annotated[str, "find pictures like the one in this message (CHANNEL/MESSAGE or MESSAGE)"] = "",
    text: Annotated[str, "only pictures with these exact words on them, in their message or file name"] = "",
    page: Annotated[int, "which page of results"] = 1,
    more: Annotated[str, "a saved search to continue (the More button)"] = "",
    expand: Annotated[str, "show the near-duplicates collapsed into this result (CHANNEL/MESSAGE; "
                           "the +N similar button)"] = "",
) -> AsyncIterator[Reply]:
    """Find pictures posted in your channels, by text, by example, or like a message's picture."""
    request = ctx.request
    settings = ctx.plugin_settings("search")
    top = top or settings.top
    if not 1 <= top <= MAX_TOP:
        raise UserError(f"top must be between 1 and {MAX_TOP}.")
    if page < 1:
        raise UserError("page starts at 1.")
    if more:
        saved = await ctx.run_blocking(ctx.store.get, _SAVED + more)
        if saved is None:
            raise UserError("That search has expired; run /search again.")
        parsed = _parsed_from(saved["query"])
        top = saved["top"]
        kwargs = {"vector_ref": saved["vector_ref"], "exclude": saved.get("exclude"),
                  "terms": [list(t) for t in parsed.terms] or None,  # the words the next page ranks by too
                  "calibrate": bool(saved.get("calibrate"))}
        label = saved["label"]
    else:
        parsed = parse_query(query, user_id=request.user_id)
        if text.strip():
            parsed = dataclasses.replace(parsed, phrases=tuple(dict.fromkeys((*parsed.phrases, check_phrase(text)))))
        kwargs, label = ({}, "") if expand else _what(request, parsed, image, similar)
    if expand:  # the "+N similar" button: one result's near-duplicates, under the saved search's filters
        kwargs, label = _expanded(request, expand)
    channels, scope = _channels(request, parsed)
    result = SearchPage.from_json(await ctx.engine.run(QUERY, {
        **kwargs, "space": request.space_id, "channels": None if channels is None else sorted(channels),
        "private": None if request.readable_channels is None else sorted(request.private_scopes),
        "authors": list(parsed.authors) or None, "after": parsed.after, "before": parsed.before,
        "text": list(parsed.phrases) or None, "k": top, "offset": (page - 1) * top}, queue="gpu"))
    if not more:
        await ctx.run_blocking(ctx.store.set, _SAVED + result.vector_ref, {
            "query": _parsed_to(parsed), "top": top, "vector_ref": result.vector_ref,
            "exclude": kwargs.get("exclude"), "label": label, "calibrate": kwargs.get("calibrate", False)},
            ttl=SAVED_SEARCH_TTL)
    sheet = await ctx.run_blocking(ctx.engine.blobs.get, result.sheet) if result.sheet else None
    yield _answer(result, label=label, scope=scope, parsed=parsed, page=page, top=top, sheet=sheet,
                  ref=more or result.vector_ref, expand=expand)


def _what(request: "Request", parsed: ParsedQuery, image: Attachment | None, similar: str) -> tuple[dict, str]:
    """The query task's arguments for what to look for, and a label for the reply."""
    if similar:
        channel, message = _message_ref(request, similar)
        return {"similar": {"channel_id": channel, "message_id": message}, "exclude": message}, \
            f"pictures like message {message}"
    if not parsed.terms and image is None and not parsed.phrases:
        raise UserError("Tell me what to look for: `/search query: whiteboard sketch` or attach an image.")
    label = " + ".join(p for p in (parsed.text and f"“{parsed.text}”", image and f"picture {image.filename}") if p)
    if parsed.phrases:
        label = " ".join(p for p in (label, *(f'text:"{phrase}"' for phrase in parsed.phrases)) if p)
    # only a text query is calibrated: the relevance background is made of texts
    return {"terms": [list(t) for t in parsed.terms], "image": image.key if image else None,
            "calibrate": image is None}, label


def _expanded(request: "Request", expand: str) -> tuple[dict, str]:
    channel, message = _message_ref(request, expand)
    return {"expand": {"channel_id": channel, "message_id": message}}, f"near-duplicates of message {message}"


def _message_ref(request: "Request", text: str) -> tuple[str, str]:
    """CHANNEL/MESSAGE, or MESSAGE in this channel."""
    channel, _, message = text.strip().rpartition("/")
    return channel or request.channel_id, message


def _channels(request: "Request", parsed: ParsedQuery) -> tuple[frozenset[str] | None, str]:
    """The channels this search may look in: what the query asks for, within what the requester may
    read. `None` = the whole space (the operator CLI without --channel)."""
    readable = request.readable_channels
    if parsed.all_channels:
        return readable, "all your channels"
    if parsed.channels:
        if readable is not None and not set(parsed.channels) <= readable:
            raise UserError("I can only search channels you can read; check the `in:` channel.")
        return frozenset(parsed.channels), ", ".join("#" + c for c in parsed.channels)
    if request.conversation is None or readable is None or request.channel_id not in readable:
        # not typed in a channel (the operator CLI): its scope is every channel it may read
        return readable, "all your channels"
    return frozenset({request.channel_id}), "this channel"


def _parsed_to(parsed: ParsedQuery) -> dict:
    return {"channels": list(parsed.channels), "all": parsed.all_channels, "authors": list(parsed.authors),
            "after": parsed.after, "before": parsed.before, "terms": [list(t) for t in parsed.terms],
            "phrases": list(parsed.phrases)}


def _parsed_from(saved: dict) -> ParsedQuery:
    return ParsedQuery(terms=tuple(tuple(t) for t in saved["terms"]), channels=tuple(saved["channels"]),
                       all_channels=saved["all"], authors=tuple(saved["authors"]), after=saved["after"],
                       before=saved["before"], phrases=tuple(saved.get("phrases", ())))


def _answer(result: SearchPage, *, label: str, scope: str, parsed: ParsedQuery, page: int, top: int,
            sheet: bytes | None, ref: str, expand: str = "") -> Reply:
    results = result.results
    first = (page - 1) * top + 1
    data = {"results": [r.public() for r in results], "page": page, "model": result.model,
            "cutoff": result.cutoff, "unknown_authors": list(result.unknown_authors)}
    unknown = _unknown_authors(result, scope)
    if not results:
        where = "there" if page == 1 else "after those"
        filters = describe_filters(parsed)
        text = f"No pictures match {escape(label)} in {escape(scope)}" + (f", {escape(filters)}" if filters else "") \
            + f" {where}."
        if result.reindexing:
            text += " Pictures are being re-indexed for a new model; try again in a while."
        return Reply(text="\n".join(unknown + [text]), data=data, final=True)
    heading = _heading(result, label=label, scope=scope, page=page)
    lines = unknown + [heading]
    for i, r in enumerate(results):
        if r.weak and (i == 0 or not results[i - 1].weak) and "nothing matches well" not in heading:
            lines.append(italic(f"Weak matches (under this space's cut-off {result.cutoff:.2f}):"))
        lines.append(f"{first + i}. {_result_line(r)}")
    notes = list(parsed.notes)
    if result.meaningless:
        notes.append(f"{result.model} is a random test model: these results mean nothing")
    if result.reindexing:
        notes.append("pictures are being re-indexed for a new model; some may be missing")
    if notes:
        lines.append(italic("; ".join(notes)))
    images = (Image(sheet, "search.png", f"results {first}-{first + len(results) - 1}"),) if sheet else ()
    return Reply(text="\n".join(lines), images=images, data=data, final=True,
                 actions=_actions(results, first=first, ref=ref, page=page, more=result.more, expand=expand))


def _heading(result: SearchPage, *, label: str, scope: str, page: int) -> str:
    heading = f"{bold('Search')}: {escape(label)} in {escape(scope)}" + (f" (page {page})" if page > 1 else "")
    weak = sum(r.weak for r in result.results)
    if page == 1 and weak == len(result.results):  # not there: say so, rather than offer the least bad
        heading += f" — nothing matches well; {weak} weak match{'es' * (weak != 1)}" \
            + (f" (under this space's cut-off {result.cutoff:.2f})" if result.cutoff is not None else "") + ":"
    return heading


def _unknown_authors(result: SearchPage, scope: str) -> list[str]:
    return [f"I know nobody called @{escape(a)} who posted pictures in {escape(scope)}."
            for a in result.unknown_authors]


def _actions(results: tuple[Hit, ...], *, first: int, ref: str, page: int, more: bool, expand: str) -> tuple:
    """Like N for the first results, "N: +M similar" for collapsed ones, More when there is more.
    (A button's options must stay short: Discord custom ids hold 100 characters.)"""
    place = [f"{r.channel}/{r.message_id}" for r in results]
    actions = [Action(f"Like {first + i}", "search", {"similar": p}) for i, p in enumerate(place[:4]) if len(p) <= 60]
    actions += [Action(f"{first + i}: +{r.similar} similar", "search", {"more": ref, "expand": p})
                for i, (r, p) in enumerate(zip(results, place)) if r.similar and len(p) <= 60][:3]
    if more:
        following = {"more": ref, "page": page + 1, **({"expand": expand} if expand else {})}
        actions.append(Action("More", "search", following, style="primary"))
    return tuple(actions)


def _result_line(r: Hit) -> str:
    when = time.strftime("%Y-%m-%d", time.gmtime(r.posted_at)) if r.posted_at else ""
    who = r.author_name or r.author or "someone"
    text = f"{who} in #{r.channel}" + (f", {when}" if when else "")
    shown = link(text, r.permalink) if r.permalink else escape(text)
    named = f" · {escape(_clip(r.file_name, 40))}" if r.file_name else ""
    similar = f" (+{r.similar} similar)" if r.similar else ""
    line = f"{shown}{named} · {r.score:.2f}{similar}"
    if r.message_text:
        line += f" · “{escape(_clip(r.message_text, 60))}”"
    if r.text and (r.text_match or not r.message_text):
        line += f" · {italic('on it')}: {escape(r.text)}"  # the words on the picture that matched
    return line


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


# ---- /index ---------------------------------------------------------------------------------------
@command(name="index", long_running=True)
async def index_(
    ctx,
    action: Annotated[Literal["status", "stats", "backfill", "add", "remove", "ocr"], "what to do"],
    target: Annotated[str, "backfill: the channel (default: this one); ocr: on or off"] = "",
    images: Annotated[list[Attachment], "add: pictures to index"] = (),
    message_id: Annotated[str, "add/remove: the message the pictures belong to"] = "",
    author: Annotated[str, "add: who posted them"] = "",
    restart: Annotated[bool, "backfill: start again from the newest message"] = False,
) -> AsyncIterator[Reply]:
    """Index status; admins: backfill history, add or remove pictures, switch OCR (text in pictures)."""
    request = ctx.request
    if action in ("status", "stats"):
        yield dataclasses.replace(await _stats(ctx), final=True)
        return
    if not request.is_admin:
        raise UserError(f"Only admins can use /index {action}.")
    if action == "ocr":
        yield await _switch_ocr(ctx, target)
    elif action == "backfill":
        async for reply in _backfill(ctx, target, restart):
            yield reply
    elif action == "add":
        yield dataclasses.replace(await _add(ctx, list(images), message_id, author), final=True)
    else:
        if not message_id:
            raise UserError("/index remove needs message_id (the message whose pictures go).")
        channel = None if request.readable_channels is None else request.channel_id
        n = Removed.from_json(await ctx.engine.run(REMOVE, {"space": request.space_id, "message_id": message_id,
                                                            "channel_id": channel}, queue="gpu")).removed
        yield Reply(text=f"Removed {n} picture{'s' * (n != 1)} of message {escape(message_id)} from the index.",
                    data={"message_id": message_id, "removed": n}, final=True)


async def _switch_ocr(ctx: "CommandContext", target: str) -> Reply:
    """`/index ocr on|off`: whether this space's pictures have their text read from now on."""
    state = target.strip().lower()
    if state not in ("on", "off"):
        raise UserError("Say `/index ocr on` or `/index ocr off`.")
    key = _OCR_OFF + ctx.request.space_id
    if state == "on":
        await ctx.run_blocking(ctx.store.delete, key)
    else:
        await ctx.run_blocking(ctx.store.set, key, time.time())
    everywhere = ctx.settings.ocr
    text = (f"Text in pictures is {'read' if state == 'on' else 'no longer read'} as they are indexed here"
            + ("." if everywhere else ", once OCR is on for this bot (CLIPBOT_OCR is false).")
            + (" Pictures read before keep their words." if state == "off" else ""))
    return Reply(text=text, data={"space": ctx.request.space_id, "ocr": state == "on", "ocr_global": everywhere},
                 final=True)


async def _stats(ctx: "CommandContext") -> Reply:
    request = ctx.request
    stats = IndexStats.from_json(await ctx.engine.run(STATS, {"space": request.space_id}, queue="gpu"))
    pending = await ctx.run_blocking(lambda: ctx.engine.pending(PENDING).size())
    readable = request.readable_channels
    # a private thread's pictures are counted under the thread: shown to who may see that thread
    by_channel = {c: n for c, n in stats.by_channel.items()
                  if readable is None or c in readable or c in request.private_scopes}
    ocr = ctx.settings.ocr and await ctx.run_blocking(ocr_enabled, ctx.store, request.space_id)
    data: dict[str, object] = {"space": request.space_id, "model": stats.model, "by_channel": by_channel,
                            "occurrences": sum(by_channel.values()), "channels": len(by_channel), "ocr": ocr}
    if readable is None:  # whole-space totals only for the operator: they count unreadable channels
        data.update(embeddings=stats.embeddings, stale=stats.stale, pending=pending)
    lines = [f"{bold('Index')} of {escape(request.space_id or 'this space')}: {data['occurrences']} pictures "
             f"in {data['channels']} channel{'s' * (data['channels'] != 1)} you can read"]
    lines += [f"- #{escape(c)}: {n}" for c, n in sorted(by_channel.items())]
    lines.append(f"Text in pictures (OCR): {'read' if ocr else 'not read'} as they are indexed")
    if readable is None:
        lines.append(f"{stats.embeddings} distinct pictures; {pending} waiting to be indexed"
                     + (f"; {stats.stale} being re-embedded for {stats.model}" if stats.stale else ""))
    states = await ctx.run_blocking(_backfill_states, ctx.store, request.platform, request.space_id, readable)
    if states:
        data["backfills"] = states
        lines += [f"- backfill #{escape(c)}: " + ("done" if s.get("done") else "in progress")
                  + f", {s.get('queued', 0)} pictures from {s.get('messages', 0)} messages" for c, s in states.items()]
    return Reply(text="\n".join(lines), data=data)


async def _add(ctx: "CommandContext", images: list[Attachment], message_id: str, author: str) -> Reply:
    if not images:
        raise UserError("/index add needs at least one picture.")
    request = ctx.request
    message_id = message_id or f"cli-{uuid.uuid4().hex[:12]}"
    items = [{"space_id": request.space_id, "channel_id": request.channel_id, "message_id": message_id,
              "source_id": a.source_id or (str(i) if len(images) > 1 else ""), "key": a.key,
              "author_id": author or request.user_id, "author_name": author or request.user_name,
              "posted_at": time.time(), "permalink": "", "platform": request.platform, "file_name": a.filename}
             for i, a in enumerate(images)]
    result = Indexed.from_json(await ctx.engine.run(INDEX_NOW, {"items": items}, queue="gpu"))
    text = (f"Indexed {result.indexed} of {len(images)} picture{'s' * (len(images) != 1)} as message "
            f"{escape(message_id)} ({result.embedded} new embeddings).")
    if result.skipped:
        text += f" {result.skipped} could not be read."
    return Reply(text=text, data={"message_id": message_id, "channel": request.channel_id, **result.to_json()})


# ---- backfill --------------------------------------------------------------------------------------
def _backfill_key(platform: str, space: str, channel: str) -> str:
    return f"{_BACKFILL}{platform}:{space}:{channel}"


def _backfill_states(store: "Store", platform: str, space: str, readable: frozenset[str] | None) -> dict:
    prefix = f"{_BACKFILL}{platform}:{space}:"
    states = {key[len(prefix):]: store.get(key) for key in store.keys(prefix)}
    return {c: s for c, s in states.items() if s and (readable is None or c in readable)}


async def _backfill(ctx: "CommandContext", target: str, restart: bool) -> AsyncIterator[Reply]:
    """Walk a channel's history through the adapter, page by page, queueing its pictures like live
    posts. The cursor is saved after every page, so an interrupted backfill resumes there."""
    request, settings = ctx.request, ctx.plugin_settings("search")
    named = parse_query(f"in:{target.split()[0]}").channels if target.strip() else (request.channel_id,)
    if not named:
        raise UserError("Backfill one channel at a time: `/index backfill #channel`.")
    channel = named[0]
    if not request.may_read(channel):
        raise UserError("I can only backfill a channel you can read.")
    source = ctx.app.history_source(request.platform)
    if source is None:
        raise UserError(f"The {request.platform} adapter offers no message history to backfill from.")
    key = _backfill_key(request.platform, request.space_id, channel)
    state = None if restart else await ctx.run_blocking(ctx.store.get, key)
    if state is None or state.get("done"):
        state = {"cursor": None, "pages": 0, "messages": 0, "queued": 0, "done": False}
        await ctx.run_blocking(ctx.store.delete, f"{_GONE_CHANNEL}{request.space_id}:{channel}")
    elif state["pages"]:
        yield Reply(text=f"Resuming the backfill of #{escape(channel)} after {state['messages']} messages.",
                    progress=0.0)
    while True:
        try:
            events, cursor = await source.history(request.space_id, channel, state["cursor"], settings.backfill_page)
        except UserError:
            raise
        except Exception as exc:
            log.warning("history of %s/%s failed", request.space_id, channel, exc_info=True)
            raise UserError(f"Reading the history of #{channel} failed ({type(exc).__name__}); run /index backfill "
                            f"again to resume after {state['messages']} messages.") from None
        await _backpressure(ctx, settings.batch_size)
        for event in events:  # as if posted now: every plugin hears it (clipbot_image_posted)
            await ctx.app.image_posted(event)
        items = [item for event in events for item in event_items(event)]
        state.update(cursor=cursor, pages=state["pages"] + 1, messages=state["messages"] + len(events),
                     queued=state["queued"] + len(items), done=cursor is None, updated=time.time())
        await ctx.run_blocking(ctx.store.set, key, state)
        if cursor is None:
            break
        yield Reply(text=f"Backfilling #{escape(channel)}: {state['queued']} pictures from {state['messages']} "
                    "messages so far", progress=min(0.95, state["pages"] / (state["pages"] + 2)))
        await _sleep(settings.backfill_delay)
    await _wait_indexed(ctx)
    yield Reply(text=f"Backfill of #{escape(channel)} done: {state['queued']} pictures from {state['messages']} "
                f"messages are searchable.", final=True,
                data={"channel": channel, **{k: state[k] for k in ("pages", "messages", "queued")}})


async def _backpressure(ctx: "CommandContext", batch_size: int) -> None:
    # Don't read history faster than the worker embeds it: the queue stays a few batches long.
    queue = ctx.engine.pending(PENDING)
    while await ctx.run_blocking(queue.size) > 4 * batch_size:
        await _sleep(0.2)


async def _wait_indexed(ctx: "CommandContext") -> None:
    queue = ctx.engine.pending(PENDING)
    deadline = time.monotonic() + ctx.settings.job_timeout
    while await ctx.run_blocking(queue.size) and time.monotonic() < deadline:
        await _sleep(0.1)
    # the last batch may still be embedding: a tiny query job runs after it on the same queue
    await ctx.engine.run(STATS, {"space": ctx.request.space_id}, queue="gpu")


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@hookimpl
def clipbot_commands():
    return [search, index_]


@hookimpl
def clipbot_task_modules():
    return ["plugins.search.tasks"]


@hookimpl
def clipbot_settings():
    return SearchSettings


def encode_vector(vector: "np.ndarray") -> str:
    """A query vector as short text (float16, base64) for the saved-search store."""
    import numpy as np

    return base64.b64encode(np.asarray(vector, dtype=np.float16).tobytes()).decode()


def decode_vector(text: str) -> "np.ndarray":
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype=np.float16).astype(np.float32)
