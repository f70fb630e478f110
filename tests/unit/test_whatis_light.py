"""The torch-free half of /whatis: label parsing, label sets, the answer text."""

from dataclasses import replace

import pytest

from engine.errors import UserError
from engine.store import SqliteStore
from plugins.whatis import format_answer
from plugins.whatis.labels import LabelSets, parse_labels
from plugins.whatis.results import Classification, Scored


def test_parse_labels_trims_and_dedupes():
    assert parse_labels(" cat,dog ;  Cat\n a   red car ,, ", max_labels=10) == ["cat", "dog", "a red car"]


@pytest.mark.parametrize("text, max_labels, message", [
    ("cat", 10, "at least two labels"),
    (", ,", 10, "at least two labels"),
    ("a, b, c", 2, "That's 3 labels; the limit is 2."),
    ("cat, " + "x" * 101, 10, "is too long"),
])
def test_parse_labels_errors(text, max_labels, message):
    with pytest.raises(UserError, match=message):
        parse_labels(text, max_labels=max_labels)


def test_label_sets_are_per_channel_and_platform():
    store = SqliteStore()
    a, b, slack_a = LabelSets(store, "discord", "A"), LabelSets(store, "discord", "B"), LabelSets(store, "slack", "A")
    a.save("pets", ["cat", "dog"])
    assert a.get("pets") == ["cat", "dog"] and b.get("pets") is None and slack_a.all() == {}
    with pytest.raises(UserError, match="one word"):
        a.save("two words", ["x", "y"])
    assert a.remove("pets") and not a.remove("pets")


RESULT = Classification.from_json({
    "model": "ViT-B-32:laion2b_s34b_b79k", "meaningless": False,
    "labels": [{"label": "golden retriever", "score": 0.82}, {"label": "tennis ball", "score": 0.1}]})


def test_answer_names_the_best_guess_and_the_source():
    text, note = format_answer(RESULT, "ImageNet-1k")
    assert text.splitlines()[0] == "Looks like **golden retriever** (82%)."
    assert "1. golden retriever: 82.0%" in text and "2. tennis ball: 10.0%" in text
    assert "random test model" not in text
    assert note == "ViT-B-32:laion2b_s34b_b79k · labels: ImageNet-1k"


def test_unsure_answers_say_so():
    unsure = replace(RESULT, labels=(Scored("cat", 0.07), Scored("dog", 0.05)), unsure=True)
    text, _ = format_answer(unsure, "your labels")
    assert text.startswith("I'm not sure: none of your labels fits well (best guess cat, 7%).")
    assert format_answer(unsure, "ImageNet-1k")[0].startswith("I'm not sure: none of the ImageNet-1k classes fits")
    assert format_answer(replace(unsure, unsure=False), "your labels")[0].startswith("Looks like **cat**")


def test_small_probabilities_are_under_one_percent_not_rounded_up():
    from plugins.whatis.chart import percent

    assert [percent(p) for p in (0.0, 0.004, 0.0099, 0.01, 0.505)] == ["0%", "<1%", "<1%", "1%", "50%"]
    tiny = replace(RESULT, labels=(Scored("cat", 0.9952), Scored("dog", 0.0046), Scored("cow", 0.0002)))
    text, _ = format_answer(tiny, "your labels")
    assert "2. dog: 0.5%" in text and "3. cow: <0.1%" in text and "(100%)" in text


def test_meaningless_models_are_flagged():
    text, note = format_answer(replace(RESULT, model="tiny-test", meaningless=True), "x")
    assert "tiny-test is a random test model; these answers mean nothing" in text
    assert note.endswith("random test model: meaningless")
