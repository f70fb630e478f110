"""TEMPORARY stub of the interface in /work/coord/INTERFACES.md (main's version replaces it on merge)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.commands import Attachment


@dataclass(frozen=True)
class ImagePosted:
    platform: str
    space_id: str
    channel_id: str
    message_id: str
    author_id: str
    posted_at: float
    permalink: str
    attachments: tuple[Attachment, ...]
    thread_id: str | None = None
    text: str = ""
    author_name: str = ""


@dataclass(frozen=True)
class MessageDeleted:
    platform: str
    space_id: str
    channel_id: str
    message_id: str
    source_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelRemoved:
    platform: str
    space_id: str
    channel_id: str


class HistorySource(Protocol):
    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]: ...
