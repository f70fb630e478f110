"""Typing a `text:"exact words"` filter: the query parser, and the option parser that the local chat
and Slack share, which hands /search its query as typed so the quotes reach the parser."""

from __future__ import annotations

import pytest

from bot.options import parse_command_text
from engine.errors import UserError
from plugins.search import search
from plugins.search.query import parse_query


def test_text_phrases_are_filters_not_search_words():
    parsed = parse_query('whiteboard text:"Quarterly  roadmap" text:kiwi -people in:all')
    assert parsed.phrases == ("Quarterly roadmap", "kiwi")
    assert parsed.terms == (("whiteboard", 1.0), ("people", -0.5)) and parsed.all_channels
    assert parse_query('text:"kiwi"').terms == ()
    with pytest.raises(UserError, match="text:"):
        parse_query('text:"!!"')


def test_the_search_query_arrives_as_typed_from_the_local_chat_and_slack():
    options = parse_command_text(search, 'design text:"quarterly roadmap" -"red car" top: 3')
    assert options == {"query": 'design text:"quarterly roadmap" -"red car"', "top": "3"}
    parsed = parse_query(options["query"])
    assert parsed.phrases == ("quarterly roadmap",) and parsed.terms == (("design", 1.0), ("red car", -0.5))
