"""Honest /search answers through the local chat on the tiny model, against both index backends:
the relevance cut-off (weak matches, "nothing matches well"), near-duplicates collapsed in the sheet
and the JSON and expanded by their button, empty answers that name their filters, unknown `from:`
users, file names on result lines, and More only when there is more."""

from __future__ import annotations

import io

from PIL import Image

from tests.conftest import write_image
from tests.plugin.test_search_local import COLORS, ask, bot, pictures, post_event  # noqa: F401 - fixtures

__all__ = ["bot", "pictures"]


def plant_text_picture(bot, text: str, message: str) -> None:
    """A picture whose embedding is the tiny model's embedding of `text`: on a random model, the
    only way to have a picture that truly matches a text query."""
    from engine.index import Occurrence, process_index
    from engine.models import clip_for
    from plugins.search import pipeline

    clip = clip_for(bot.app.settings)
    vector = pipeline.encode_terms(clip, [(text, 1.0)])
    thumb = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(thumb, format="JPEG")
    process_index(bot.app.settings).add("local", clip.fingerprint, {f"planted-{message}": (vector, thumb.getvalue())},
                                        [Occurrence("local", "general", message, f"planted-{message}",
                                                    author_id="ana", file_name="sketch.jpg", posted_at=1.7e9)])


def numbered(reply) -> list[str]:
    return [line for line in reply.text.splitlines() if line[:1].isdigit()]


def test_a_search_for_what_is_there_ranks_it_above_the_cutoff_and_the_rest_are_weak(bot, pictures):
    for i, name in enumerate(("red", "green", "blue", "yellow")):
        post_event(bot, pictures[name], message=f"m{i}")
    plant_text_picture(bot, "whiteboard sketch", "wb")
    found = ask(bot, "search", query="whiteboard sketch", top=10)
    results, cutoff = found.data["results"], found.data["cutoff"]
    assert results[0]["message_id"] == "wb" and not results[0]["weak"] and results[0]["score"] > cutoff
    assert [r["weak"] for r in results[1:]] == [True] * 4 and all(r["score"] < cutoff for r in results[1:])
    lines = found.text.splitlines()
    assert "nothing matches well" not in found.text
    assert lines.index(next(li for li in lines if "Weak matches" in li)) == 2  # after the one real match
    assert all(f"{r['score']:.2f}" in line for r, line in zip(results, numbered(found)))  # every score shown

    absent = ask(bot, "search", query="a bowl of soup", top=10)
    assert absent.data["results"] and all(r["weak"] for r in absent.data["results"])
    assert f"nothing matches well; {len(absent.data['results'])} weak matches" in absent.text.splitlines()[0]
    assert absent.images  # the weak matches are still shown, numbered (grey) on the sheet

    by_example = ask(bot, "search", image=_attach(bot, pictures["red"]))  # picture queries are not calibrated
    assert by_example.data["cutoff"] is None and not any(r["weak"] for r in by_example.data["results"])


def _attach(bot, path):
    from bot.commands import Attachment

    return Attachment(bot.app.engine.blobs.put(path.read_bytes()), path.name, "image/png", 1)


def test_near_duplicates_collapse_in_the_sheet_and_the_json_and_expand(bot, pictures, tmp_path):
    for i in range(3):  # the same picture posted three times, and a resized copy
        post_event(bot, pictures["red"], message=f"r{i}", channel=("general", "design")[i % 2])
    resized = write_image(tmp_path / "red-small.png", size=(80, 62), color=COLORS["red"])
    post_event(bot, resized, message="r-small")
    post_event(bot, pictures["blue"], message="b")
    post_event(bot, pictures["white"], message="w")
    readable = ("general", "design")
    reply = ask(bot, "search", image=_attach(bot, pictures["red"]), query="in:all", readable=readable)
    results = reply.data["results"]
    assert [r["similar"] for r in results] == [3, 0, 0] and results[0]["message_id"] in {"r0", "r1", "r2", "r-small"}
    assert "(+3 similar)" in numbered(reply)[0]
    [sheet] = reply.images
    with Image.open(io.BytesIO(sheet.data)) as im:  # three cells in one row, not six
        assert im.width == 3 * 176 + 8
    expand = next(a for a in reply.actions if a.label == "1: +3 similar")
    copies = ask(bot, expand.command, readable=readable, **expand.options)
    assert sorted(r["message_id"] for r in copies.data["results"]) == ["r-small", "r0", "r1", "r2"]
    assert all(r["score"] >= 0.95 for r in copies.data["results"])
    assert ask(bot, expand.command, readable=("general",), **expand.options).data["results"] and {
        r["channel"] for r in ask(bot, expand.command, readable=("general",), **expand.options).data["results"]
    } == {"general"}  # the clicker's permissions


def test_empty_answers_name_their_filters_and_unknown_users(bot, pictures):
    post_event(bot, pictures["red"], message="m1", author="bo")
    reply = ask(bot, "search", query="square from:@nobody after:2024-01-01 before:2024-02-01")
    assert reply.data["results"] == [] and reply.data["unknown_authors"] == ["nobody"]
    first, second = reply.text.splitlines()
    assert first == "I know nobody called @nobody who posted pictures in this channel."
    assert "from @nobody, posted 2024-01-01 to 2024-01-31" in second
    old = ask(bot, "search", query="square from:@bo before:2001-01-01")  # bo is known: just nothing then
    assert old.data["unknown_authors"] == [] and "from @bo, posted before 2001-01-01" in old.text
    elsewhere = ask(bot, "search", query="square from:@bo", channel="random", readable=("random",))
    assert elsewhere.data["unknown_authors"] == ["bo"]  # not in the channels searched: nothing said of others


def test_result_lines_name_the_file_and_more_shows_only_when_there_is_more(bot, pictures):
    for i, name in enumerate(("red", "green", "blue")):
        post_event(bot, pictures[name], message=f"m{i}")
    exact = ask(bot, "search", query="a square", top=3)
    assert len(exact.data["results"]) == 3 and "More" not in [a.label for a in exact.actions]
    assert {r["file_name"] for r in exact.data["results"]} == {"red.png", "green.png", "blue.png"}
    assert all(r["file_name"] in line for r, line in zip(exact.data["results"], numbered(exact)))
    paged = ask(bot, "search", query="a square", top=2)
    more = next(a for a in paged.actions if a.label == "More")
    last = ask(bot, more.command, **more.options)
    assert len(last.data["results"]) == 1 and "More" not in [a.label for a in last.actions]
