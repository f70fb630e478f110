"""Render a stream of `Reply`s into one Slack conversation: messages, edits, uploads, buttons.

A reply stream addresses one message. Quick commands post their answer (a progress message,
if any, is edited into the answer). Long jobs (`CommandSpec.long_running`) post a parent
message at their first public reply (a private refusal posts none) and work in its thread: the
parent is edited with the progress (and its Cancel button) and finally the answer and its buttons; snapshots and the final images are uploaded into the thread with the
`files_upload_v2` flow. Writes are paced per channel (Slack allows about one a second) and
progress is throttled per job, so a fast GPU never outruns Slack's rate tiers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler

from bot.actions import encode_action
from bot.adapters.base import count_api_answer
from bot.commands import Action, Image, Reply
from bot.markup import render_slack
from engine.errors import UserError

log = logging.getLogger(__name__)

SECTION_LIMIT = 3000  # characters of mrkdwn in one section block
VALUE_LIMIT = 2000  # characters in a button's value
TEXT_LIMIT = 39000  # a message's text field
_GONE = {"channel_not_found", "not_in_channel", "is_archived"}


class CountingRetryHandler(AsyncRetryHandler):
    """Never retries: sees every Web API answer first and counts the errors, rate limits (429)
    included (`bot.adapters.base.count_api_answer`)."""

    async def can_retry_async(self, *, state: Any, request: Any, response: Any = None,
                              error: Exception | None = None) -> bool:
        if response is not None:
            body = response.body if isinstance(response.body, dict) else {}
            count_api_answer("slack", response.status_code, ok=body.get("ok", True) is not False)
        return False


class ChannelPacer:
    """At most one bot write per `interval` seconds in each channel."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @asynccontextmanager
    async def slot(self, channel: str) -> AsyncIterator[None]:
        async with self._locks[channel]:
            wait = self._next.get(channel, 0.0) - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                yield
            finally:
                self._next[channel] = time.monotonic() + self.interval


@dataclass
class Target:
    """Where a request's answers go."""

    channel: str
    user: str  # the requester: ephemeral replies go to them
    thread_ts: str | None = None  # answer in this thread (None: the channel itself)
    respond: Callable[..., Awaitable[Any]] | None = None  # response_url fallback (bot not in channel)


def blocks_for(text: str, actions: tuple[Action, ...] = ()) -> list[dict]:
    """Section blocks for mrkdwn `text` and one actions block of buttons carrying encoded Actions."""
    blocks: list[dict] = [{"type": "section", "text": {"type": "mrkdwn", "text": chunk}}
                          for chunk in _chunks(text, SECTION_LIMIT) if chunk.strip()][:45]
    buttons = []
    for i, action in enumerate(actions[:25]):
        try:
            value = encode_action(action, limit=VALUE_LIMIT)
        except ValueError:  # too long for a button: leave it out rather than fail the answer
            log.warning("action %r for /%s is too long for a Slack button; left out", action.label, action.command)
            continue
        button = {"type": "button", "action_id": f"clipbot:{i}", "value": value,
                  "text": {"type": "plain_text", "text": action.label[:75] or action.command, "emoji": True}}
        if action.style in ("primary", "danger"):
            button["style"] = action.style
        buttons.append(button)
    if buttons:
        blocks.append({"type": "actions", "block_id": "clipbot-actions", "elements": buttons})
    return blocks


def _chunks(text: str, limit: int) -> list[str]:
    """Split on line ends into pieces of at most `limit` characters (long lines are cut)."""
    chunks, current = [], ""
    for line in text.split("\n"):
        for piece in [line[i:i + limit] for i in range(0, len(line), limit)] or [""]:
            if current and len(current) + 1 + len(piece) > limit:
                chunks.append(current)
                current = piece
            else:
                current = f"{current}\n{piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks


SPOILER_NOTE = "_(blurred: Slack has no spoiler tags to hide it behind)_"


def _rendered(reply: Reply) -> str:
    """The reply's text as mrkdwn; a picture meant to be behind a spoiler says it is blurred only."""
    text = render_slack(reply.text)
    if any(image.spoiler for image in reply.images):
        text = f"{text}\n{SPOILER_NOTE}" if text else SPOILER_NOTE
    return text


def progress_line(progress: float) -> str:
    filled = max(0, min(10, round(progress * 10)))
    return f"`{'▓' * filled}{'░' * (10 - filled)}` {progress:.0%}"


class ReplyPoster:
    """Posts one request's replies. `open_parent` first for long jobs."""

    def __init__(self, client: Any, pacer: ChannelPacer, target: Target, *, progress_interval: float) -> None:
        self.client, self.pacer, self.target = client, pacer, target
        self.progress_interval = progress_interval
        self.parent_ts: str | None = None  # long jobs: the message that shows progress and the answer
        self.header = ""
        self._progress_ts: str | None = None  # quick commands: the progress message to replace
        self._last_progress = float("-inf")
        self.opener: Callable[[], Awaitable[Any]] | None = None  # long jobs: posts the parent (once)

    @property
    def thread_ts(self) -> str | None:
        return self.target.thread_ts or self.parent_ts

    async def open_parent(self, header: str) -> str:
        """Post the long job's parent message; its thread receives the snapshots and results."""
        self.header = header
        self.parent_ts = await self._post(f"{header}\n_starting…_")
        if self.parent_ts is None:  # answered through response_url: the bot is not in the channel
            raise UserError("I need to be in this channel to work on that here: /invite me first.")
        return self.parent_ts

    def resume_parent(self, parent_ts: str, header: str) -> None:
        """Carry on in a parent message posted earlier (a restarted bot following a long job)."""
        self.parent_ts, self.header = parent_ts, header

    async def deliver(self, replies: AsyncIterator[Reply]) -> None:
        async for reply in replies:
            if self.opener is not None and self.parent_ts is None and reply.public:
                await self.opener()
            try:
                if reply.final:
                    await self._final(reply)
                    return  # the final reply ends the stream; nothing may overwrite it
                elif reply.progress is not None:
                    await self._progress(reply)
                else:
                    await self._message(reply)
            except SlackApiError as exc:  # one failed post must not lose the rest of the answer
                log.error("Slack refused a reply in %s: %s", self.target.channel, exc.response.get("error"))

    # ---- reply kinds -------------------------------------------------------------------------
    async def _progress(self, reply: Reply) -> None:
        now = time.monotonic()
        if now - self._last_progress < self.progress_interval:
            return  # throttled: a later progress reply or the final answer replaces it
        self._last_progress = now
        text = "\n".join(t for t in (_rendered(reply), progress_line(reply.progress)) if t)
        if self.parent_ts:  # the progress's buttons (Cancel) come along: a chat.update replaces the blocks
            await self._update(self.parent_ts, f"{self.header}\n{text}", reply.actions)
            if reply.images:
                await self._upload(reply.images, thread_ts=self.thread_ts)
        elif self._progress_ts:
            await self._update(self._progress_ts, text, reply.actions)
        else:
            self._progress_ts = await self._post(text, actions=reply.actions)

    async def _message(self, reply: Reply) -> None:
        if reply.ephemeral:
            await self._ephemeral(reply)
        else:
            await self._post(render_slack(reply.text), reply.images, reply.actions)

    async def _final(self, reply: Reply) -> None:
        text = _rendered(reply)
        if self.parent_ts:  # long job: the parent shows the outcome, the thread gets the pictures
            if reply.images:
                await self._upload(reply.images, thread_ts=self.thread_ts)
            body = f"{self.header}\n{':warning: ' if reply.error else ''}{text}".strip()
            await self._update(self.parent_ts, body, reply.actions)
            return
        if reply.ephemeral or reply.error:
            if self._progress_ts:
                await self._delete(self._progress_ts)
            await self._ephemeral(reply)
            return
        if self._progress_ts and not reply.images:
            await self._update(self._progress_ts, text, reply.actions)
            return
        if self._progress_ts:  # files can't be added to a message by editing it
            await self._delete(self._progress_ts)
        if text or reply.images or reply.actions:
            await self._post(text, reply.images, reply.actions)

    # ---- Slack calls ---------------------------------------------------------------------------
    async def _post(self, text: str, images: tuple[Image, ...] = (), actions: tuple[Action, ...] = ()) -> str | None:
        """A message (text, pictures, buttons) in the target; returns its ts when it is a plain message."""
        if images:
            await self._upload(images, thread_ts=self.target.thread_ts, comment=text if not actions else None)
            if not actions:
                return None
            text = text if text else " "
        blocks = blocks_for(text, actions) if actions else None
        async with self.pacer.slot(self.target.channel):
            try:
                resp = await self.client.chat_postMessage(channel=self.target.channel, text=text[:TEXT_LIMIT],
                                                          blocks=blocks, thread_ts=self.target.thread_ts,
                                                          unfurl_links=False, unfurl_media=False)
            except SlackApiError as exc:
                if exc.response.get("error") in _GONE and self.target.respond is not None:
                    await self.target.respond(text=text[:TEXT_LIMIT], response_type="in_channel")
                    return None
                raise
        return resp["ts"]

    async def _update(self, ts: str, text: str, actions: tuple[Action, ...] = ()) -> None:
        async with self.pacer.slot(self.target.channel):
            await self.client.chat_update(channel=self.target.channel, ts=ts, text=text[:TEXT_LIMIT],
                                          blocks=blocks_for(text, actions) if actions else [])

    async def _delete(self, ts: str) -> None:
        async with self.pacer.slot(self.target.channel):
            await self.client.chat_delete(channel=self.target.channel, ts=ts)

    async def _upload(self, images: tuple[Image, ...], *, thread_ts: str | None, comment: str | None = None) -> None:
        uploads = [{"content": image.data, "filename": image.filename, "title": image.description or image.filename}
                   for image in images]
        async with self.pacer.slot(self.target.channel):
            await self.client.files_upload_v2(channel=self.target.channel, thread_ts=thread_ts, file_uploads=uploads,
                                              initial_comment=comment or None)

    async def _ephemeral(self, reply: Reply) -> None:
        text = render_slack(reply.text) or "Done."
        if reply.error:
            text = f":warning: {text}"
        if reply.images:  # Slack has no private uploads
            text += "\n_(pictures can't be shown privately)_"
        try:
            await self.client.chat_postEphemeral(channel=self.target.channel, user=self.target.user, text=text,
                                                 thread_ts=self.target.thread_ts)
        except SlackApiError as exc:
            if exc.response.get("error") in _GONE and self.target.respond is not None:
                await self.target.respond(text=text, response_type="ephemeral")
            else:
                raise
