"""What adapters tell plugins besides commands: pictures posted, messages deleted, channels lost.

Adapters store every posted image's bytes in the blob store at once (platform file URLs expire)
and call `App.image_posted` / `message_deleted` / `channel_removed`, which run the matching hooks.
A `HistorySource` lets a plugin walk a channel's past messages (backfill) through the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.commands import Attachment


@dataclass(frozen=True)
class ImagePosted:
    """A message with one or more pictures, as the adapter saw it."""

    platform: str
    space_id: str
    channel_id: str
    message_id: str
    author_id: str
    posted_at: float  # unix time
    permalink: str
    attachments: tuple[Attachment, ...]
    thread_id: str | None = None
    text: str = ""
    author_name: str = ""
    private: bool = False  # posted in a private thread (`thread_id`): only who may see that thread finds it


@dataclass(frozen=True)
class MessageDeleted:
    """A message went; with `source_ids`, only those files of it (Slack's file_deleted)."""

    platform: str
    space_id: str
    channel_id: str
    message_id: str
    source_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelRemoved:
    """The bot left a channel or lost access to it: what it learned there must go."""

    platform: str
    space_id: str
    channel_id: str


class HistorySource(Protocol):
    """A platform's message history, page by page, for backfills.

    Returns the images of one page and a cursor for the next (None when the history is done);
    bytes are already in the blob store, as for live events.
    """

    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]: ...
