"""The /search CLI contract, as operators and acceptance checks run it: each call a fresh process
on the embedded engine; the index persists in the data dir (and in PostgreSQL for pgvector)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_clipbot as clipbot, write_image
from tests.support.pictures import text_png


@pytest.fixture(params=["embedded", "pgvector"])
def env(request):
    return {"CLIPBOT_INDEX_URL": request.getfixturevalue("postgres_url")} if request.param == "pgvector" else {}


@pytest.mark.slow
def test_index_add_search_remove_stats(tmp_path, env):
    data = tmp_path / "data"
    red = write_image(tmp_path / "red.png", color=(220, 20, 20))
    blue = write_image(tmp_path / "blue.png", color=(20, 20, 220))
    green = write_image(tmp_path / "green.png", color=(20, 200, 20))
    out = clipbot(data, "index", "add", "--space", "T1", "--channel", "C1", "--author", "ana", "--message-id", "M1",
                  str(red), str(blue), "--json", **env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["indexed"] == 2
    out = clipbot(data, "index", "add", "--space", "T2", "--channel", "C2", "--message-id", "M2", str(green), **env)
    assert out.returncode == 0 and "Indexed 1 of 1 picture" in out.stdout, out.stderr

    out = clipbot(data, "search", "--space", "T1", "--image", str(blue), "--top", "5", "--json", **env)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert [set(r) for r in results] == [{"message_id", "channel", "author", "score", "permalink", "text",
                                         "message_text", "file_name", "similar", "weak"}] * 2
    assert {r["file_name"] for r in results} == {"red.png", "blue.png"} and [r["similar"] for r in results] == [0, 0]
    assert not any(r["weak"] for r in results)  # a search by picture is not calibrated
    assert results[0]["message_id"] == "M1" and results[0]["author"] == "ana" and results[0]["score"] > 0.99
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)  # never T2's

    out = clipbot(data, "index", "remove", "--space", "T1", "--message-id", "M1", "--json", **env)
    assert out.returncode == 0 and json.loads(out.stdout)["removed"] == 2, out.stderr
    stats = json.loads(clipbot(data, "index", "stats", "--space", "T2", "--json", **env).stdout)
    assert (stats["embeddings"], stats["occurrences"], stats["by_channel"]) == (1, 1, {"C2": 1})
    if env:
        return  # the rest is about the CLI's scope, not the backend
    out = clipbot(data, "search", "--space", "T2", "--channel", "C1", "--channel", "C2", "--top", "1", "a square",
                  "--json")
    assert [r["message_id"] for r in json.loads(out.stdout)["results"]] == ["M2"]
    out = clipbot(data, "search", "--space", "T2", "--channel", "C1", "a square", "--json")
    assert json.loads(out.stdout)["results"] == []
    out = clipbot(data, "search", "--space", "T2", "a square", "--json")  # text: calibrated on the space
    page = json.loads(out.stdout)
    assert isinstance(page["cutoff"], float) and [r["weak"] for r in page["results"]] == [
        r["score"] < page["cutoff"] for r in page["results"]]


def test_cli_mistakes_are_one_line_exit_2(tmp_path):
    data = tmp_path / "data"
    out = clipbot(data, "index", "add", "--space", "T", "--channel", "C", str(tmp_path / "missing.png"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "No such file" in out.stderr
    out = clipbot(data, "index", "remove", "--space", "T")
    assert out.returncode == 2 and "message_id" in out.stderr
    out = clipbot(data, "index", "add", "--space", "T", "--bogus", "x")
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr


@pytest.mark.slow
def test_search_text_filter_and_json_text_fields(tmp_path):
    """`clipbot search --text "words"` keeps pictures with those words on them (real OCR when they were
    indexed); the JSON names the words that matched and the message's text."""
    data = tmp_path / "data"
    slide = tmp_path / "slide-1.png"
    slide.write_bytes(text_png(["Quarterly roadmap", "kiwi budget"]))
    plain = write_image(tmp_path / "plain.png", color=(20, 20, 220))
    out = clipbot(data, "index", "add", "--space", "T1", "--channel", "C1", "--message-id", "M1", str(slide), str(plain),
                  "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["read"] == 2, out.stderr  # both read, one had words
    out = clipbot(data, "search", "--space", "T1", "--text", "Quarterly Roadmap", "--json")
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert [(r["message_id"], r["text"], r["message_text"]) for r in results] == [("M1", "Quarterly roadmap", "")]
    out = clipbot(data, "search", "--space", "T1", "--text", "kiwi roadmap", "--json")
    assert json.loads(out.stdout)["results"] == []  # the words, in that order
