"""Neutral reply markup, the shared option parser and buttons-as-data."""

import pytest

from bot.actions import decode_action, encode_action
from bot.commands import Action, Attachment, command
from bot.markup import bold, bullets, code, escape, italic, link, numbered, render_discord, render_plain, render_slack
from bot.options import parse_command_text
from engine.errors import UserError


def test_helpers_escape_user_text_so_it_stays_literal():
    text = bold("sea_lion *2*") + " " + italic("a_b")
    assert render_plain(text) == "sea_lion *2* a_b"
    assert render_slack(text) == "*sea_lion *2** _a_b_"
    assert render_discord(text) == r"**sea\_lion \*2\*** _a\_b_"


def test_links_code_and_lists_per_platform():
    text = "See " + link("the message", "https://example.com/m?a=1") + " and " + code("a*b") + "\n" + bullets(["x < y", "z & w"])
    assert render_plain(text) == "See the message (https://example.com/m?a=1) and a*b\n- x < y\n- z & w"
    assert render_slack(text) == "See <https://example.com/m?a=1|the message> and `a*b`\n• x &lt; y\n• z &amp; w"
    assert render_discord(text) == "See [the message](https://example.com/m?a=1) and `a*b`\n- x < y\n- z & w"
    assert numbered(["a", "b"]) == "1. a\n2. b"


def test_plain_text_is_unchanged_by_every_renderer():
    text = "Looks like a cat (92%). 3 + 4 = 7"
    assert render_plain(text) == render_discord(text) == text
    assert render_slack(text) == text
    assert escape("plain") == "plain"


# What people type into labels, prompts and queries, echoed back in replies.
HOSTILE = "@everyone @here <@123456789012345678> <@&234567890123456789> <!channel> <@U123> ||boo|| ~~x~~"
HIDDEN = "a\u202edcb\u2066\u200f\x1bc\x07\x00z\x9b"  # an RLO override, an isolate, RLM, ESC, BEL, NUL


def test_discord_echoes_user_text_without_pings_or_spoilers():
    for text in (escape(HOSTILE), bold(HOSTILE), italic(HOSTILE), link(HOSTILE, "https://example.com/x")):
        out = render_discord(text)
        assert "@everyone" not in out and "@here" not in out  # the zero-width space breaks the ping
        assert "<@1" not in out and "<@&2" not in out
        assert "||" not in out and "\\|\\|boo\\|\\|" in out and "\\~\\~x\\~\\~" in out
    assert render_discord(escape(HOSTILE)) == (
        "@\u200beveryone @\u200bhere <@\u200b123456789012345678> <@\u200b&234567890123456789> <!channel> <@U123> "
        "\\|\\|boo\\|\\| \\~\\~x\\~\\~")  # shown as typed: Discord drops the zero-width space's width and the \\
    assert "@everyone" not in render_discord(code("@everyone"))


def test_slack_echoes_user_text_without_mentions():
    out = render_slack(escape(HOSTILE) + " " + bold("<!here>"))
    assert "<" not in out and ">" not in out
    assert "&lt;!channel&gt; &lt;@U123&gt;" in out and "*&lt;!here&gt;*" in out
    assert "||boo||" in out  # Slack has no spoiler markup: shown as typed


def test_every_renderer_strips_control_and_bidi_characters():
    for render in (render_plain, render_discord, render_slack):
        assert render(escape(HIDDEN) + "\tend\nnext") == "adcbcz\tend\nnext", render


@command(name="demo")
async def _demo(ctx, image: Attachment, labels: str = "", top: int = 0):
    """Demo."""


def test_option_parser_positional_and_named():
    assert parse_command_text(_demo, "a.png cat, dog top: 3") == {"image": "a.png", "labels": "cat, dog", "top": "3"}
    assert parse_command_text(_demo, "labels: cat, dog") == {"labels": "cat, dog"}
    assert parse_command_text(_demo, '"my file.png"') == {"image": "my file.png"}
    with pytest.raises(UserError, match="check your quotes"):
        parse_command_text(_demo, '"unclosed')


def test_actions_round_trip_and_respect_the_discord_limit():
    action = Action("Reroll", "imagine", {"prompt": "a fox", "seed": 7, "hq": True})
    text = encode_action(action)
    assert text.startswith("cb1:") and len(text) <= 100
    back = decode_action(text, label="Reroll")
    assert back == action
    with pytest.raises(ValueError, match="limit is 100"):
        encode_action(Action("x", "imagine", {"prompt": "p" * 200}))
    assert len(encode_action(Action("x", "imagine", {"prompt": "p" * 200}), limit=2000)) < 2000
    for junk in ("hello", "cb1:{", "cb1:[1, 2]"):
        with pytest.raises(ValueError):
            decode_action(junk)
    with pytest.raises(ValueError):
        Action("x", "y", {"bad": [1, 2]})
