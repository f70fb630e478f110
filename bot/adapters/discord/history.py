"""Discord's message history as a `HistorySource` (backfill), through a running adapter's client."""

from __future__ import annotations

from typing import Any

import discord

from bot.events import ImagePosted
from engine.errors import UserError

__all__ = ["DiscordHistory"]


class DiscordHistory:
    """`HistorySource` over `channel.history`, newest first; the cursor is the oldest message id seen."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter

    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]:
        try:
            channel = await self.adapter._channel(int(channel_id))
        except ValueError:
            raise UserError(f"{channel_id!r} is not a Discord channel id (Developer Mode > Copy Channel ID).") from None
        except (discord.NotFound, discord.Forbidden):
            raise UserError("I cannot see that channel: is the bot in it, with Read Message History?") from None
        if str(getattr(getattr(channel, "guild", None), "id", "")) != str(space_id):
            raise UserError("That channel is not in this server.")
        before = discord.Object(int(cursor)) if cursor else None
        events, oldest, seen = [], None, 0
        async for message in channel.history(limit=limit, before=before):
            seen, oldest = seen + 1, message.id
            if message.author.bot:
                continue
            event = await self.adapter.image_event(message)
            if event is not None:
                events.append(event)
        return events, (str(oldest) if seen == limit and oldest is not None else None)
