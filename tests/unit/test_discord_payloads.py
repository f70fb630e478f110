"""CommandSpec → Discord application command JSON, interaction options → request options, files that fit."""

from __future__ import annotations

import io
import random
from typing import Annotated, Literal

import pytest
from PIL import Image as PILImage

from bot.adapters.discord.payloads import (
    MANAGE_GUILD,
    WHATIS_MENU,
    clip_text,
    command_payloads,
    fit_image,
    interaction_options,
    is_image,
)
from bot.commands import Attachment, Image, command


@command
async def whatis(ctx, image: Annotated[Attachment, "the picture"], labels: Annotated[str, "labels"] = "",
                 top: int = 0) -> None:
    """Say what is in a picture."""


@command(admin_only=True)
async def index(ctx, action: Annotated[Literal["backfill", "status"], "what to do"], depth: float = 1.0,
                dry: bool = False) -> None:
    """Index this server's pictures."""


def test_every_option_type_choices_required_and_admin_permission():
    payloads = command_payloads({"whatis": whatis, "index": index})
    by_name = {p["name"]: p for p in payloads}
    assert [o["type"] for o in by_name["whatis"]["options"]] == [11, 3, 4]
    assert by_name["whatis"]["options"][0] == {"type": 11, "name": "image", "description": "the picture",
                                              "required": True}
    idx = by_name["index"]
    assert idx["default_member_permissions"] == str(MANAGE_GUILD) == "32"
    assert "default_member_permissions" not in by_name["whatis"]
    assert idx["options"][0]["choices"] == [{"name": "backfill", "value": "backfill"},
                                            {"name": "status", "value": "status"}]
    assert [o["type"] for o in idx["options"]] == [3, 10, 5]
    assert by_name[WHATIS_MENU] == {"type": 3, "name": WHATIS_MENU, "contexts": [0], "integration_types": [0]}
    assert all(p["contexts"] == [0] for p in payloads)


def test_required_options_come_first_as_discord_demands():
    @command
    async def odd(ctx, a: int = 1, *, b: str) -> None:
        """Odd order."""

    (payload,) = command_payloads({"odd": odd})
    assert [o["name"] for o in payload["options"]] == ["b", "a"]


def test_no_menu_without_whatis_and_long_descriptions_are_cut():
    @command
    async def long(ctx) -> None:
        """Word word word word word word word word word word word word word word word word word word word word word."""

    (payload,) = command_payloads({"long": long})
    assert len(payload["description"]) == 100 and payload["description"].endswith("…")


def test_interaction_options_resolve_attachments():
    data = {"name": "whatis", "type": 1, "options": [
        {"name": "labels", "type": 3, "value": "cat, dog"}, {"name": "top", "type": 4, "value": 2},
        {"name": "image", "type": 11, "value": "55"}],
        "resolved": {"attachments": {"55": {"id": "55", "filename": "a.png", "url": "https://x/a.png", "size": 3}}}}
    values, files = interaction_options(data)
    assert values == {"labels": "cat, dog", "top": 2}
    assert files["image"]["filename"] == "a.png"


def test_is_image():
    assert is_image("a.bin", "image/png") and not is_image("a.png", "text/plain") and is_image("A.JPG", None)


def _noise_png(size: int) -> bytes:
    rng = random.Random(1)
    im = PILImage.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("limit", [60_000, 8_000])
def test_fit_image_reencodes_then_downscales_to_the_limit(limit):
    png = _noise_png(256)
    assert len(png) > 190_000
    fitted = fit_image(Image(png, "final.png", "the result"), limit)
    assert len(fitted.data) <= limit and fitted.filename == "final.jpg" and fitted.description == "the result"
    with PILImage.open(io.BytesIO(fitted.data)) as im:
        assert im.format == "JPEG"
        assert im.size[0] < 256 if limit == 8_000 else True


def test_fit_image_keeps_small_images_untouched():
    small = Image(b"\x89PNG tiny", "a.png")
    assert fit_image(small, 1000) is small


def test_clip_text():
    assert clip_text("a" * 2000) == "a" * 2000
    cut = clip_text("a" * 5000)
    assert len(cut) <= 2000 and cut.endswith("(cut: too long)")


def test_list_options_become_numbered_options_and_fold_back():
    from dataclasses import replace

    from bot.adapters.discord.payloads import fold_multiple

    if "multiple" not in whatis.options[0].__dataclass_fields__:
        pytest.skip("Option.multiple lands with the /search merge")
    spec = replace(whatis, options=tuple(replace(o, multiple=True) if o.name == "image" else o for o in whatis.options))
    (payload,) = [p for p in command_payloads({"whatis": spec}) if p["type"] == 1]
    assert [(o["name"], o["required"]) for o in payload["options"] if o["type"] == 11] == [
        ("image", True), ("image2", False), ("image3", False), ("image4", False), ("image5", False)]
    assert payload["options"][0]["name"] == "image"  # required first
    assert fold_multiple(spec, {"image": "a", "image3": "c", "top": 2}) == {"image": ["a", "c"], "top": 2}


def test_message_menus_for_commands_a_picture_alone_can_run():
    from bot.adapters.discord.payloads import message_menus

    @command
    async def search(ctx, query: str = "", image: Attachment = None) -> None:
        """Find pictures."""

    @command
    async def imagine(ctx, prompt: str, init: Attachment = None) -> None:
        """Draw."""

    @command
    async def tag(ctx, picture: Attachment) -> None:
        """Tag a picture."""

    menus = message_menus({"search": search, "imagine": imagine, "whatis": whatis, "tag": tag})
    assert menus == {"What is this?": ("whatis", "image"), "Find similar pictures": ("search", "image"),
                     "/tag this": ("tag", "picture")}
    assert [p["name"] for p in command_payloads({"search": search, "tag": tag}) if p["type"] == 3] == [
        "Find similar pictures", "/tag this"]
