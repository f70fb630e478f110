"""Slack files and history for clipbot: private downloads, index events, backfill, event dedupe.

No bolt here: these take the slack_sdk `AsyncWebClient` and Slack's JSON, so the Slack app
(`bot.adapters.slack.app`) and backfill share them.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from slack_sdk.errors import SlackApiError

from bot.commands import Attachment
from bot.events import ImagePosted
from bot.adapters.base import Intake
from bot.intake import Downloader, FileHosts, ImageLimits
from engine.errors import ImageRejected, UserError

log = logging.getLogger(__name__)

PLATFORM = "slack"
_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")
DEDUPE_TTL = 24 * 3600  # Slack retries an event for about 6 minutes; a day is plenty


# Slack's own https hosts: files.slack.com and the workspace hosts under slack.com, Slack's CDN
# (slack-edge.com) and GovSlack's domain. No setting adds to these (CLIPBOT_SLACK_API_URL does not).
SLACK_FILE_DOMAINS = ("slack.com", "slack-edge.com", "slack-gov.com")


class FileFetcher:
    """Downloads `url_private` files with the bot token, only from Slack's own hosts."""

    def __init__(self, token: str, *, max_bytes: int, max_pixels: int, test_hosts: Iterable[str] = ()) -> None:
        self.limits = ImageLimits(max_bytes, max_pixels)
        # The token goes only to the host the file was asked from; a redirect elsewhere loses it.
        self._files = Downloader(FileHosts(domains=SLACK_FILE_DOMAINS, test_hosts=test_hosts), platform="Slack",
                                 max_bytes=max_bytes, refusal="That file is not on Slack, so I won't fetch it.",
                                 credentials={"Authorization": f"Bearer {token}"}, check_type=self._not_login_page)
        self._warned_scope = False

    def trusted(self, url: str) -> bool:
        return self._files.hosts.trusted(url)

    def _not_login_page(self, content_type: str) -> None:
        if content_type == "text/html":  # Slack's login page: the token lacks files:read
            if not self._warned_scope:
                log.error("Slack answered a file download with a login page: add the files:read scope "
                          "to the app and reinstall it")
                self._warned_scope = True
            raise UserError("I can't read files in this workspace yet (the app needs the files:read scope).")

    async def fetch(self, url: str) -> tuple[bytes, str]:
        """The file's bytes and content type; UserError when it is not a usable image."""
        downloaded = await self._files.fetch(url)
        return downloaded.data, downloaded.content_type

    async def attachment(self, blobs: Any, file: dict) -> Attachment:
        """Download one Slack file, check it as an image and store it in the blob store."""
        url = file.get("url_private_download") or file.get("url_private", "")
        try:
            return await Intake(blobs, self.limits, self._files).download(
                url, filename=file.get("name") or "image", source_id=file.get("id", ""),
                declared_size=int(file.get("size") or 0))
        except ImageRejected as exc:  # not a picture we accept
            raise UserError(f"{file.get('name', 'That file')}: {exc}") from None

    async def close(self) -> None:
        await self._files.close()


def image_files(message: dict) -> list[dict]:
    """The message's files that are pictures (Slack's own mimetype; bytes are checked on download)."""
    return [f for f in message.get("files") or () if f.get("mimetype") in _IMAGE_TYPES
            and f.get("mode") != "tombstone" and (f.get("url_private") or f.get("url_private_download"))]


def permalink(base_url: str, channel: str, ts: str, thread_ts: str | None = None) -> str:
    """Slack's message permalink format, built without a chat.getPermalink call per message."""
    link = f"{base_url.rstrip('/')}/archives/{channel}/p{ts.replace('.', '')}"
    if thread_ts and thread_ts != ts:
        link += f"?thread_ts={thread_ts}&cid={channel}"
    return link


async def image_posted(fetcher: FileFetcher, blobs: Any, *, team: str, channel: str, message: dict,
                       workspace_url: str) -> ImagePosted | None:
    """An ImagePosted for a message with pictures (bytes stored now: Slack URLs need the token),
    or None when it has none we could read."""
    attachments = []
    for file in image_files(message):
        try:
            attachments.append(await fetcher.attachment(blobs, file))
        except UserError as exc:
            log.warning("not indexing file %s in %s/%s: %s", file.get("id"), channel, message.get("ts"), exc)
    if not attachments:
        return None
    ts = message["ts"]
    return ImagePosted(platform=PLATFORM, space_id=team, channel_id=channel, message_id=ts,
                       author_id=message.get("user", ""), posted_at=float(ts),
                       permalink=permalink(workspace_url, channel, ts, message.get("thread_ts")),
                       attachments=tuple(attachments), thread_id=message.get("thread_ts"),
                       text=message.get("text", ""), author_name=message.get("user_profile", {}).get("name", ""))


class FileLocations:
    """Where each indexed Slack file was posted: Slack's `file_deleted` event names only the file.

    Kept in the engine's small-state store (shared by every bot process), one key per file.
    """

    def __init__(self, store: Any) -> None:
        self._store = store

    @staticmethod
    def _key(team: str, file_id: str) -> str:
        return f"slack:file:{team}:{file_id}"

    async def remember(self, event: ImagePosted) -> None:
        for attachment in event.attachments:
            key = self._key(event.space_id, attachment.source_id)
            places = await asyncio.to_thread(self._store.get, key) or []
            if [event.channel_id, event.message_id] not in places:
                await asyncio.to_thread(self._store.set, key, places + [[event.channel_id, event.message_id]])

    async def forget(self, team: str, file_id: str) -> list[tuple[str, str]]:
        """The (channel, message) places of a file, forgotten now."""
        key = self._key(team, file_id)
        places = await asyncio.to_thread(self._store.get, key) or []
        await asyncio.to_thread(self._store.delete, key)
        return [tuple(p) for p in places]


class SlackHistory:
    """`HistorySource` for backfill: conversations.history, newest first, resumable by cursor.

    Rate limits are waited out by the client's retry handler (Retry-After); a cursor that is
    returned resumes exactly after the page just read.
    """

    def __init__(self, client: Any, fetcher: FileFetcher, blobs: Any, workspace_url: Any,
                 locations: FileLocations | None = None) -> None:
        self._client, self._fetcher, self._blobs, self._locations = client, fetcher, blobs, locations
        self._workspace_url = workspace_url  # a callable: known only after auth.test

    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]:
        try:
            page = await self._client.conversations_history(channel=channel_id, cursor=cursor or None,
                                                            limit=max(1, min(limit, 200)))
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in ("channel_not_found", "not_in_channel"):
                raise UserError("I cannot read that channel's history: invite me to it first "
                                f"(/invite @clipbot), then backfill again ({error}).") from None
            if error == "missing_scope":
                raise UserError("Reading history needs the channels:history (and groups:history) scopes: "
                                "reinstall the app from its manifest.") from None
            raise
        found = []
        for message in page.get("messages") or ():
            if message.get("subtype") not in (None, "file_share", "thread_broadcast") or not image_files(message):
                continue
            event = await image_posted(self._fetcher, self._blobs, team=space_id, channel=channel_id,
                                       message=message, workspace_url=await self._workspace_url())
            if event is not None:
                found.append(event)
                if self._locations is not None:
                    await self._locations.remember(event)
        next_cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
        return found, next_cursor if page.get("has_more") else None


class EventDedupe:
    """Claims an event id once (Slack retries events and may deliver one twice), and the replay
    key of a command, shortcut or click (`bot.adapters.slack.app.replay_key`).

    Redis SET NX EX when the engine uses Redis (several bot processes share it); otherwise a
    small SQLite table in the data dir, so a retry after a restart is still recognised.
    """

    def __init__(self, settings: Any) -> None:
        self._redis = None
        self._db: sqlite3.Connection | None = None
        if settings.state_redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.from_url(settings.state_redis_url)
        else:
            path = Path(settings.data_dir) / "slack-events.sqlite"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("CREATE TABLE IF NOT EXISTS seen (event_id TEXT PRIMARY KEY, at REAL)")
            self._lock = asyncio.Lock()

    async def claim(self, event_id: str, ttl: int = DEDUPE_TTL) -> bool:
        """True the first time `event_id` is seen (within `ttl` seconds; SQLite keeps every id a
        day), False for repeats."""
        if not event_id:
            return True
        if self._redis is not None:
            return bool(await self._redis.set(f"clipbot:slack:event:{event_id}", 1, nx=True, ex=ttl))
        async with self._lock:
            return await asyncio.to_thread(self._claim_sqlite, event_id)

    def _claim_sqlite(self, event_id: str) -> bool:
        now = time.time()
        cur = self._db.execute("INSERT OR IGNORE INTO seen (event_id, at) VALUES (?, ?)", (event_id, now))
        if cur.rowcount and int(now) % 100 == 0:  # prune now and then
            self._db.execute("DELETE FROM seen WHERE at < ?", (now - DEDUPE_TTL,))
        return cur.rowcount == 1

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
        if self._db is not None:
            self._db.close()
