"""/blend: 2-5 pictures (attachments, or indexed pictures by their message link) as image prompts,
with optional text, weighted as text prompts are (light: no torch).

The pictures are read into CLIP embeddings first, by a quick task on the `gpu` queue
(`plugins.imagine.blend_tasks`): an attachment is embedded, a linked picture's embedding comes
from the search index, only where the requester can read it (the same place filter /search
applies). Every refusal (a count outside 2-5, a link with no indexed picture, a channel the
requester cannot see, a file that is no picture) is one sentence, and nothing is queued. Then it
is an ordinary /imagine job with `image_prompts`: its buttons (Reroll, Variations, Upscale...)
are /imagine's, and keep the pictures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, AsyncIterator, Literal

from bot.commands import Attachment, Reply, command
from engine.errors import UserError
from plugins.imagine.plan import Asked, ImagePrompt
from plugins.imagine.prompts import parse_prompts, parse_weights

PICTURES = "imagine.blend_pictures"
MIN_PICTURES, MAX_PICTURES = 2, 5

_DISCORD = re.compile(r"^https://(?:(?:ptb|canary)\.)?discord(?:app)?\.com/channels/(\d+|@me)/(\d+)/(\d+)/?$")
_SLACK = re.compile(r"^https://[\w.-]+\.slack\.com/archives/([A-Z0-9]+)/p(\d{10})(\d{6})(?:\?.*)?$")
_LOCAL = re.compile(r"^(?:local://)?(?:([\w.-]+)/)?([\w.-]+)$")


@dataclass(frozen=True)
class PictureLink:
    """Where an indexed picture was posted, as a message link names it."""

    channel: str
    message: str
    space: str = ""  # the Discord guild in the link ("" where the link does not say)
    text: str = ""  # the link as given

    def to_json(self) -> dict:
        return {"channel_id": self.channel, "message_id": self.message, "link": self.text}


def parse_link(text: str, channel_id: str) -> PictureLink:
    """A Discord message link, a Slack permalink, or a local `local://CHANNEL/MESSAGE`,
    `CHANNEL/MESSAGE` or `MESSAGE` (in this channel), as /search shows them."""
    given = text.strip()
    raw = given.strip("<>").split("|", 1)[0]  # Slack wraps links: <https://...|label>
    if match := _DISCORD.match(raw):
        return PictureLink(match.group(2), match.group(3), "" if match.group(1) == "@me" else match.group(1), given)
    if match := _SLACK.match(raw):
        return PictureLink(match.group(1), f"{match.group(2)}.{match.group(3)}", "", given)
    if "://" not in raw.replace("local://", "") and (match := _LOCAL.match(raw)):
        return PictureLink(match.group(1) or channel_id, match.group(2), "", given)
    raise UserError(f"'{given[:80]}' is not a message link: give a Discord message link, a Slack permalink, "
                    "or CHANNEL/MESSAGE as /search shows it.")


def picture_links(text: str, channel_id: str) -> list[PictureLink]:
    return [parse_link(part, channel_id) for part in re.split(r"[\s,]+", text.strip()) if part]


@command(long_running=True, menus=False)
async def blend(
    ctx,
    images: Annotated[list[Attachment], f"{MIN_PICTURES}-{MAX_PICTURES} pictures to blend"] = (),
    links: Annotated[str, "message links of indexed pictures (e.g. /search hits), separated by spaces"] = "",
    prompt: Annotated[str, "optional text, weighted as in /imagine: `a watercolor:1 | blurry:-0.5`"] = "",
    weights: Annotated[str, "one weight per picture (attachments first, then links), e.g. `1 0.5 -0.3`"] = "",
    steps: Annotated[int, "optimisation steps (default: from the quality preset)"] = None,
    size: Annotated[str, "picture size, e.g. 256 or 256x192 (default: from the quality preset)"] = "",
    seed: Annotated[int, "random seed: the same seed and settings draw the same picture"] = None,
    every: Annotated[int, "a snapshot every N steps"] = None,
    drawer: Annotated[Literal["auto", "vqgan", "pixels"], "vqgan, or pixels (CLIP only)"] = None,
    preset: Annotated[Literal["draft", "normal", "best"], "quality preset"] = None,
) -> AsyncIterator[Reply]:
    """Blend 2-5 pictures (attached, or linked from messages) into a new one, with optional text."""
    from plugins.imagine import launch  # the package imports this module

    request = ctx.request
    found = picture_links(links, request.channel_id)
    count = len(images) + len(found)
    if not MIN_PICTURES <= count <= MAX_PICTURES:
        raise UserError(f"/blend takes {MIN_PICTURES} to {MAX_PICTURES} pictures (got {count}): attach them, or "
                        "give message links of indexed pictures in `links:`.")
    for link in found:
        if link.space and request.space_id and link.space != request.space_id:
            raise UserError(f"{link.text} is a message of another server; blend pictures from this one.")
    picked = parse_weights(weights, count)
    texts = parse_prompts(prompt, need_positive=False) if prompt.strip() else []
    if not any(w > 0 for w in [*picked, *(p.weight for p in texts)]):
        raise UserError("At least one picture or prompt needs a positive weight (negative ones only push away).")
    read = await ctx.engine.run(PICTURES, {
        "space": request.space_id, "images": [a.key for a in images], "links": [link.to_json() for link in found],
        "channels": None if request.readable_channels is None else sorted(request.readable_channels),
        "private": None if request.readable_channels is None else sorted(request.private_scopes)}, queue="gpu")
    sources = [a.filename for a in images] + [link.text for link in found]
    prompts = [ImagePrompt(key=key, weight=w, model=read["model"], source=source)
               for key, w, source in zip(read["keys"], picked, sources)]
    asked = Asked(prompt=prompt, steps=steps, size=size, seed=seed, every=every, drawer=drawer, preset=preset)
    async for reply in launch(ctx, asked, image_prompts=tuple(prompts)):
        yield reply
