"""The local chat's own channel life: `/post PATH [text]` posts a picture as a user would on
Discord (plugins hear `clipbot_image_posted`), and `LocalHistory` walks what was posted, so
indexing, backfills and /search work end to end with no chat platform.

Posts persist under DATA_DIR/local (the picture's bytes) and in the engine's store (the
message), so a later `clipbot run` or `clipbot index backfill` still finds them.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Annotated, Any

from bot.commands import Attachment, Reply, command
from bot.events import ImagePosted
from bot.hookspecs import hookimpl
from bot.intake import ImageLimits, file_attachment
from bot.markup import escape, link
from engine.datadir import make_dir, write_file
from engine.errors import UserError

PLATFORM = "local"
_POST = "clipbot:local:post:"
_SEQ = "clipbot:local:seq:"


class LocalHistory:
    """`bot.events.HistorySource` over the pictures posted in the local chat, oldest first."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def history(self, space_id: str, channel_id: str, cursor: str | None,
                      limit: int) -> tuple[list[ImagePosted], str | None]:
        return await asyncio.to_thread(self._page, space_id, channel_id, cursor, limit)

    def _page(self, space_id: str, channel_id: str, cursor: str | None,
              limit: int) -> tuple[list[ImagePosted], str | None]:
        store = self.app.engine.store
        keys = store.keys(f"{_POST}{space_id}:{channel_id}:")
        after = int(cursor) if cursor else 0
        todo = [k for k in keys if int(k.rsplit(":", 1)[1]) > after]
        events = []
        for key in todo[:limit]:
            post = store.get(key)
            if post is None:
                continue
            path = _files_dir(self.app) / post["file"]
            try:
                attachment = file_attachment(self.app.engine.blobs, path, limits=ImageLimits.of(self.app.settings),
                                             filename=post["filename"])
            except UserError:
                continue  # the picture's file was removed or changed by hand: nothing to index
            events.append(_event(post, attachment))
        if len(todo) <= limit:
            return events, None
        return events, todo[limit - 1].rsplit(":", 1)[1]


def _files_dir(app: Any) -> Path:
    return Path(app.settings.data_dir) / "local" / "files"


def _event(post: dict, attachment: Attachment) -> ImagePosted:
    return ImagePosted(platform=PLATFORM, space_id=post["space_id"], channel_id=post["channel_id"],
                       message_id=post["message_id"], author_id=post["author_id"], posted_at=post["posted_at"],
                       permalink=post["permalink"], attachments=(attachment,), text=post["text"],
                       author_name=post["author_name"])


def _save_post(app: Any, request: Any, image: Attachment, text: str) -> dict:
    store = app.engine.store
    data = app.engine.blobs.get(image.key)
    space, channel = request.space_id or PLATFORM, request.channel_id
    files = make_dir(_files_dir(app))
    name = hashlib.sha256(data).hexdigest()[:32] + Path(image.filename).suffix.lower()[:8]
    write_file(files / name, data)
    seq = int(store.get(f"{_SEQ}{space}:{channel}") or 0) + 1
    store.set(f"{_SEQ}{space}:{channel}", seq)
    post = {"space_id": space, "channel_id": channel, "message_id": str(seq), "author_id": request.user_id,
            "author_name": request.user_name or request.user_id, "posted_at": time.time(),
            "permalink": f"local://{channel}/{seq}", "text": text, "file": name, "filename": image.filename,
            "content_type": image.content_type}
    store.set(f"{_POST}{space}:{channel}:{seq:010d}", post)
    return post


@command(platforms=(PLATFORM,))
async def post(
    ctx,
    image: Annotated[Attachment, "the picture to post"],
    text: Annotated[str, "a message to go with it"] = "",
) -> Reply:
    """Post a picture into this local channel, as someone would on Discord (local chat only)."""
    request = ctx.request
    saved = await ctx.run_blocking(_save_post, ctx.app, request, image, text)
    await ctx.app.image_posted(_event(saved, image))
    return Reply(text=f"Posted {escape(image.filename)} in #{escape(saved['channel_id'])} as "
                      f"{link('message ' + saved['message_id'], saved['permalink'])}.",
                 data={"message_id": saved["message_id"], "channel": saved["channel_id"],
                       "permalink": saved["permalink"]})


@hookimpl
def clipbot_commands():
    return [post]
