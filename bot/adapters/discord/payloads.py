"""Pure translations between clipbot's neutral model and Discord's JSON: command specs to application
commands, interaction options to raw request options, reply images to files that fit the upload limit.

No network and no client here, so each rule is testable on its own.
"""

from __future__ import annotations

import io
from typing import Any, Iterable

from bot.commands import MESSAGE_ACTION_NAMES, Attachment, CommandSpec, Image, Option

MANAGE_GUILD = 1 << 5  # Discord permission bit "Manage Server"
WHATIS_MENU = MESSAGE_ACTION_NAMES["whatis"]
MAX_MENUS = 5  # Discord allows 5 message commands per application
MAX_FILES = 10  # attachments per message
MAX_TEXT = 2000  # characters per message
MAX_BUTTONS = 25  # 5 rows of 5
MULTIPLE = 5  # a list option becomes this many numbered options (/blend takes 5 pictures)

# Application command option types (Discord API docs, "Application Command Option Type").
OPTION_TYPES: dict[type, int] = {str: 3, int: 4, bool: 5, float: 10, Attachment: 11}
CHAT_INPUT, MESSAGE_MENU = 1, 3
GUILD_ONLY = {"contexts": [0], "integration_types": [0]}


def command_payloads(commands: dict[str, CommandSpec]) -> list[dict]:
    """The application commands for every plugin command, plus message menus ("What is this?")."""
    payloads = [_chat_input(spec) for spec in sorted(commands.values(), key=lambda s: s.name)]
    payloads += [{"type": MESSAGE_MENU, "name": name, **GUILD_ONLY} for name in message_menus(commands)]
    return payloads


def message_menus(commands: dict[str, CommandSpec]) -> dict[str, tuple[str, str]]:
    """Menu name -> (command, its picture option), for every command a message's picture alone can run
    (an image option, nothing else required): Apps > "What is this?" on any message with a picture."""
    menus: dict[str, tuple[str, str]] = {}
    for spec in sorted(commands.values(), key=lambda s: (s.name not in MESSAGE_ACTION_NAMES, s.name)):
        picture = spec.picture_option()
        if picture is not None:
            menus[spec.message_action_name(32)] = (spec.name, picture)
    return dict(list(menus.items())[:MAX_MENUS])


def _chat_input(spec: CommandSpec) -> dict:
    options = [p for o in spec.options for p in _expanded(o)]
    # Discord rejects a command whose required options do not all come before the optional ones.
    options.sort(key=lambda p: not p["required"])
    payload: dict[str, Any] = {"type": CHAT_INPUT, "name": spec.name, "description": _clip(spec.description, 100),
                               "options": options[:25], **GUILD_ONLY}
    if spec.admin_only:  # hidden from members without Manage Server; dispatch enforces it too
        payload["default_member_permissions"] = str(MANAGE_GUILD)
    return payload


def _expanded(option: Option) -> list[dict]:
    """Discord has no list options: a `multiple` one becomes `name`, `name2` ... `nameN`."""
    if not getattr(option, "multiple", False):
        return [_option(option)]
    first = _option(option)
    more = [{**_option(option), "name": f"{option.name}{i}", "required": False} for i in range(2, MULTIPLE + 1)]
    return [first, *more]


def fold_multiple(spec: CommandSpec | None, values: dict[str, Any]) -> dict[str, Any]:
    """Undo `_expanded`: `images`, `images2`, ... back into one list under `images`."""
    if spec is None:
        return values
    out = dict(values)
    for option in spec.options:
        if getattr(option, "multiple", False):
            names = [option.name] + [f"{option.name}{i}" for i in range(2, MULTIPLE + 1)]
            found = [out.pop(n) for n in names if n in out]
            if found:
                out[option.name] = found
    return out


def _option(option: Option) -> dict:
    if option.type not in OPTION_TYPES:
        raise ValueError(f"option {option.name!r} has a type Discord cannot take: {option.type!r}")
    payload: dict[str, Any] = {"type": OPTION_TYPES[option.type], "name": option.name,
                               "description": _clip(option.description or option.name, 100),
                               "required": option.required}
    if option.choices:
        payload["choices"] = [{"name": _clip(str(c), 100), "value": c} for c in option.choices[:25]]
    return payload


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clip_text(text: str) -> str:
    """Message text within Discord's 2000 characters, saying so when cut."""
    if len(text) <= MAX_TEXT:
        return text
    return text[: MAX_TEXT - 20].rstrip() + "\n… (cut: too long)"


def interaction_options(data: dict) -> tuple[dict[str, Any], dict[str, dict]]:
    """Raw option values of a chat-input interaction, and the resolved attachments by option name."""
    values: dict[str, Any] = {}
    attachments: dict[str, dict] = {}
    resolved = (data.get("resolved") or {}).get("attachments") or {}
    for option in data.get("options") or ():
        if option.get("type") == OPTION_TYPES[Attachment]:
            found = resolved.get(str(option["value"]))
            if found is not None:
                attachments[option["name"]] = found
        elif "value" in option:
            values[option["name"]] = option["value"]
    return values, attachments


def is_image(filename: str, content_type: str | None) -> bool:
    if content_type:
        return content_type.split(";")[0].strip().lower().startswith("image/")
    return filename.lower().rsplit(".", 1)[-1] in {"png", "jpg", "jpeg", "gif", "webp", "bmp"}


def fit_images(images: Iterable[Image], limit: int) -> list[Image]:
    """Each image within `limit` bytes: as is, else re-encoded as JPEG, else downscaled until it fits.

    Blocking (Pillow): call it off the event loop.
    """
    return [fit_image(image, limit) for image in list(images)[:MAX_FILES]]


def fit_image(image: Image, limit: int) -> Image:
    if len(image.data) <= limit:
        return image
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(image.data)) as im:
        im.seek(0)
        rgb = im.convert("RGB")
    stem = image.filename.rsplit(".", 1)[0]
    for quality in (90, 80, 70):
        data = _jpeg(rgb, quality)
        if len(data) <= limit:
            return Image(data, f"{stem}.jpg", image.description, spoiler=image.spoiler)
    while min(rgb.size) > 16:
        rgb = rgb.resize((max(1, rgb.width * 3 // 4), max(1, rgb.height * 3 // 4)), PILImage.Resampling.LANCZOS)
        data = _jpeg(rgb, 80)
        if len(data) <= limit:
            return Image(data, f"{stem}.jpg", image.description, spoiler=image.spoiler)
    raise ValueError(f"cannot fit {image.filename} into {limit} bytes")


def _jpeg(image: Any, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
