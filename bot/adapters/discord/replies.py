"""Replies rendered on Discord: one answer's message edited in place (`ReplyStream`), progress
edits throttled per channel, buttons that carry their action in the custom_id (`ActionButton`).

The interaction token lives 15 min: after `token_ttl` seconds (or a 50027 answer) an answer moves to
plain channel messages sent with the bot token; long jobs use a thread and the bot token from the start.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from typing import Any

import discord

from bot.actions import decode_action, encode_action
from bot.adapters.discord.channels import channel_and_thread
from bot.adapters.discord.payloads import MAX_BUTTONS, clip_text, fit_images
from bot.commands import Action, Reply
from bot.markup import clean, escape, render_discord

__all__ = ["ActionButton", "ReplyStream", "Throttle", "report_failure"]

log = logging.getLogger("bot.adapters.discord")

PLATFORM = "discord"
_STYLES = {"primary": discord.ButtonStyle.primary, "secondary": discord.ButtonStyle.secondary,
           "danger": discord.ButtonStyle.danger}
_INVALID_TOKEN = 50027


class ActionButton(discord.ui.DynamicItem[discord.ui.Button], template=r"cb1:[\s\S]+"):
    """A reply's `Action` as a button; the custom_id is the encoded action, nothing is kept in memory."""

    def __init__(self, action: Action | None, custom_id: str = "") -> None:
        if action is not None:
            custom_id = encode_action(action)
        label = action.label if action is not None else "…"
        style = _STYLES.get(action.style, discord.ButtonStyle.secondary) if action else discord.ButtonStyle.secondary
        super().__init__(discord.ui.Button(label=clean(label)[:80], style=style, custom_id=custom_id))
        self.action = action

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: Any) -> "ActionButton":
        try:
            return cls(decode_action(match.group(0), label=item.label or ""))
        except ValueError:  # a button from an older, incompatible version: say so on click
            return cls(None, match.group(0))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.client.adapter.on_click(interaction, self.action)  # type: ignore[attr-defined]


class Throttle:
    """At most one progress edit per channel every `interval` seconds (Discord: ~5 edits / 5 s)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[int, float] = {}

    def ready(self, channel_id: int) -> bool:
        now = time.monotonic()
        if now - self._last.get(channel_id, -1e9) < self.interval:
            return False
        self._last[channel_id] = now
        return True


class ReplyStream:
    """One answer on Discord: the deferred "thinking" message, edited in place for progress and the final
    reply; follow-ups for more. Long jobs, and answers that outlive the interaction token, use plain
    messages in a channel or thread sent with the bot token."""

    def __init__(self, adapter: Any, interaction: discord.Interaction | None, *,
                 channel: Any = None, message_id: int | str | None = None) -> None:
        self.adapter = adapter
        self.interaction = interaction
        self.channel = channel  # set: answer with the bot token here
        self.message: Any = None  # the message progress/final replies replace (bot-token mode)
        self._message_id = int(message_id) if message_id else None
        self.original_free = interaction is not None  # the "thinking..." placeholder is still unused
        self.progress_on_original = False
        self.progress_followup: discord.WebhookMessage | None = None
        self.shown = False  # something public is already on screen
        self.thread_name: str | None = None  # a long job's thread, opened at its first public reply
        self.private_progress: discord.WebhookMessage | None = None  # ephemeral progress, edited in place
        self.original_gone = False  # the "thinking..." placeholder was deleted (for private progress)
        if interaction is not None:
            self.deadline = interaction.created_at.timestamp() + adapter.config.token_ttl
            self.limit = interaction.filesize_limit
        else:
            self.deadline, self.limit = float("inf"), 10 * 1024 * 1024

    def conversation(self) -> dict:
        where = self.channel or (self.interaction.channel if self.interaction else None)
        channel_id, thread_id = channel_and_thread(where)
        return {"platform": PLATFORM, "guild": str(getattr(getattr(where, "guild", None), "id", "")),
                "channel": channel_id, "thread": thread_id,
                "message": str(self.message.id) if self.message is not None else None}

    async def open_if_needed(self) -> dict:
        """Open the long job's thread unless it is open (or there is none to open); the conversation."""
        if self.thread_name is not None:
            name, self.thread_name = self.thread_name, None
            await self.open_thread(name)
        return self.conversation()

    async def open_thread(self, name: str) -> None:
        """Move this answer into a thread (a new one off the placeholder, or the thread we are in)."""
        where = self.interaction.channel  # type: ignore[union-attr]
        if isinstance(where, discord.Thread):
            self.channel = where
            if not self.original_gone:
                await self._edit_original(content="Working on it here.")
            return
        if self.original_gone:  # private progress took the placeholder's place: a thread of its own
            self.channel = await where.create_thread(name=name[:100], type=discord.ChannelType.public_thread,
                                                     auto_archive_duration=1440)
            return
        original = await self.interaction.original_response()  # type: ignore[union-attr]
        await self._edit_original(content=render_discord(f"Working on it: {escape(name)}."))
        try:
            self.channel = await original.create_thread(name=name[:100], auto_archive_duration=1440)
        except discord.HTTPException as exc:  # no Create Public Threads permission: stay in the channel
            log.info("Discord: no thread for %s (%s); answering in the channel", name, exc)
            self.channel = where

    async def _edit_original(self, **fields: Any) -> None:
        await self.interaction.edit_original_response(**fields)  # type: ignore[union-attr]
        self.original_free = False
        self.shown = True

    async def send(self, reply: Reply) -> None:
        if self.thread_name is not None and reply.public:
            await self.open_if_needed()
        if self.channel is None and time.time() >= self.deadline:
            self._move_to_channel()
        is_progress = reply.progress is not None and not reply.final
        if reply.final and self._nothing_to_replace() and not (reply.text or reply.images or reply.actions):
            return  # the stream's closing marker after answers already posted
        if is_progress and not self.adapter.throttle.ready(self._channel_key()):
            return  # dropped: the next progress reply or the final one replaces it anyway
        fields = await self._fields(reply)
        if is_progress and reply.ephemeral:
            await self._private_progress(fields)
            return
        if reply.final and self.private_progress is not None:  # the answer replaces it
            await report_failure(self.private_progress.delete())
            self.private_progress = None
        try:
            await self._send(reply, is_progress, fields)
        except discord.HTTPException as exc:
            if self.channel is not None or not _token_dead(exc):
                raise
            log.info("Discord: interaction token no longer valid; answering with channel messages")
            self._move_to_channel()
            await self._send(reply, is_progress, await self._fields(reply))

    async def _send(self, reply: Reply, is_progress: bool, fields: dict) -> None:
        if self.channel is not None:
            await self._send_with_bot_token(reply, is_progress, fields)
        elif reply.ephemeral and not self.shown and not is_progress:
            if not self.original_gone:
                await self.interaction.delete_original_response()  # type: ignore[union-attr]
            self.original_free, self.original_gone = False, True
            await self.interaction.followup.send(ephemeral=True, **_as_new(fields))  # type: ignore[union-attr]
        elif (is_progress or reply.final) and (self.original_free or self.progress_on_original):
            await self._edit_original(**fields)
            self.progress_on_original = is_progress
        elif (is_progress or reply.final) and self.progress_followup is not None:
            await self.progress_followup.edit(**fields)
            self.progress_followup = None if reply.final else self.progress_followup
        else:
            sent = await self.interaction.followup.send(wait=True, **_as_new(fields))  # type: ignore[union-attr]
            self.shown = True
            self.progress_followup = sent if is_progress else None

    async def _private_progress(self, fields: dict) -> None:
        """Progress only the requester sees (/settings private): an ephemeral follow-up where they
        asked, edited in place, while the answer itself goes to its thread. Only the interaction token
        can send one: once it expired, the progress is not shown (the final answer still is)."""
        if self.interaction is None or time.time() >= self.deadline:
            return
        try:
            if self.private_progress is not None:
                await self.private_progress.edit(**fields)
                return
            if self.original_free:  # the public "thinking..." placeholder goes: nothing public yet
                await self.interaction.delete_original_response()
                self.original_free, self.original_gone = False, True
            self.private_progress = await self.interaction.followup.send(ephemeral=True, wait=True,
                                                                         **_as_new(fields))
        except discord.HTTPException as exc:
            if not _token_dead(exc):
                raise
            self.deadline = 0.0  # the token died early: no more private progress

    async def _send_with_bot_token(self, reply: Reply, is_progress: bool, fields: dict) -> None:
        if self.message is None and self._message_id is not None:
            self.message = self.channel.get_partial_message(self._message_id)
            self._message_id = None
        if self.message is not None and (is_progress or reply.final):
            await self.message.edit(**fields)
            if reply.final:
                self.message = None
            return
        sent = await self.channel.send(**_as_new(fields))
        self.message = sent if is_progress else None

    def _nothing_to_replace(self) -> bool:
        return self.shown and not self.progress_on_original and self.progress_followup is None \
            and self.message is None and not self.original_free

    def _move_to_channel(self) -> None:
        self.channel = self.interaction.channel  # type: ignore[union-attr]
        self.message = None
        self.progress_on_original = False

    def _channel_key(self) -> int:
        where = self.channel or self.interaction.channel  # type: ignore[union-attr]
        return where.id

    async def _fields(self, reply: Reply) -> dict:
        images = await asyncio.to_thread(fit_images, reply.images, self.limit) if reply.images else []
        # spoiler: discord.py names the file SPOILER_...; the picture was blurred already.
        files = [discord.File(io.BytesIO(i.data), filename=i.filename, description=i.description or None,
                              spoiler=i.spoiler) for i in images]
        view = discord.ui.View(timeout=None)
        for action in reply.actions[:MAX_BUTTONS]:
            try:
                view.add_item(ActionButton(action))
            except ValueError as exc:  # options too long for a custom_id: the answer goes without it
                log.warning("Discord: button %r left out: %s", action.label, exc)
        text = clip_text(render_discord(reply.text)) if reply.text else ("" if files else "Done.")
        return {"content": text, "attachments": files, "view": view}


def _as_new(fields: dict) -> dict:
    """Edit fields → send fields (`files=` on a new message, no empty view)."""
    out = {"content": fields["content"] or None, "files": fields["attachments"]}
    if fields["view"].children:
        out["view"] = fields["view"]
    return out


async def report_failure(coro: Any) -> None:
    try:
        await coro
    except Exception:
        log.exception("Discord: could not post the error notice either")


def _token_dead(exc: discord.HTTPException) -> bool:
    return exc.status == 401 or exc.code == _INVALID_TOKEN

