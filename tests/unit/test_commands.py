from typing import Annotated, Literal

import pytest

from bot.commands import Attachment, CommandSpec, Option, Reply, command
from engine.errors import UserError


@command
async def sample(ctx, image: Annotated[Attachment, "the picture"], mode: Literal["a", "b"] = "a",
                 count: Annotated[int, "how many"] = 3, loud: bool = False, note: str = "") -> Reply:
    """Do a sample thing.

    Longer text that is not part of the description.
    """
    return Reply(text="x")


def test_spec_from_signature():
    assert isinstance(sample, CommandSpec)
    assert sample.name == "sample"
    assert sample.description == "Do a sample thing."
    by_name = {o.name: o for o in sample.options}
    assert list(by_name) == ["image", "mode", "count", "loud", "note"]
    assert by_name["image"].type is Attachment and by_name["image"].required
    assert by_name["image"].description == "the picture"
    assert by_name["mode"].choices == ("a", "b") and by_name["mode"].default == "a"
    assert by_name["count"].type is int and by_name["count"].default == 3 and not by_name["count"].required
    assert by_name["loud"].type is bool
    assert sample.usage() == "/sample image: <image> [mode: <a|b>] [count: <number>] [loud: <yes|no>] [note: <text>]"


def test_name_override_and_validation():
    @command(name="help", admin_only=True)
    async def help_(ctx) -> Reply:
        """Help."""

    assert help_.name == "help" and help_.admin_only
    with pytest.raises(ValueError, match="invalid command name"):
        CommandSpec(name="Bad Name", description="x", handler=lambda ctx: None)
    with pytest.raises(ValueError, match="needs a description"):
        CommandSpec(name="nodoc", description="", handler=lambda ctx: None)


@pytest.mark.parametrize("option, raw, expected", [
    (Option("n", int), "42", 42),
    (Option("n", int), 7, 7),
    (Option("x", float), "0.5", 0.5),
    (Option("b", bool), "yes", True),
    (Option("b", bool), "off", False),
    (Option("b", bool), True, True),
    (Option("s", str), "  hi  ", "hi"),
    (Option("c", str, choices=("set", "show")), "show", "show"),
])
def test_option_convert(option, raw, expected):
    assert option.convert(raw) == expected


@pytest.mark.parametrize("option, raw, message", [
    (Option("top", int), "many", "option 'top' must be a whole number, got 'many'"),
    (Option("x", float), "abc", "option 'x' must be a number"),
    (Option("b", bool), "maybe", "must be yes or no"),
    (Option("c", str, choices=("set", "show")), "drop", "must be one of: set, show"),
    (Option("image", Attachment), "some/path.png", "needs an attached image"),
    (Option("n", int), True, "must be a whole number"),
])
def test_option_convert_errors_are_user_facing(option, raw, message):
    with pytest.raises(UserError, match=message):
        option.convert(raw)


def test_value_types_are_frozen():
    reply = Reply(text="a")
    with pytest.raises(AttributeError):
        reply.text = "b"  # type: ignore[misc]


def test_list_options_take_several_values():
    from bot.commands import Attachment, command

    @command
    async def collect(ctx, files: list[Attachment] = (), tags: list[str] = ()):
        """Collect files."""

    files, tags = collect.options
    assert files.multiple and files.type is Attachment and files.default == ()
    a = Attachment("k1", "a.png", "image/png", 3)
    assert files.convert([a, a]) == (a, a) and tags.convert("x") == ("x",)
    with pytest.raises(UserError):
        files.convert(["not an attachment"])
