"""/search and /whatis through the local chat on the `tiny-multilingual` preset: a Hugging Face
XLM-RoBERTa text tower whose tokenizer is trained offline at first use. Queries and labels in
German, Japanese and Arabic reach the model intact, and the answers are the ones the model itself
gives (recomputed here from an independently loaded copy of the same seeded model)."""

from __future__ import annotations

import socket

import pytest
import torch
from PIL import Image

from bot.testing import TestBot
from engine.models.clip import PROMPT_TEMPLATES, load_clip
from tests.conftest import write_image

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUERIES = ["rotes Quadrat", "赤い四角", "مربع أحمر"]
LABELS = ["猫", "犬", "Katze", "قطة"]


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    return {name: write_image(folder / f"{name}.png", size=(90, 70), color=rgb) for name, rgb in COLORS.items()}


@pytest.fixture(scope="module")
def bot(tmp_path_factory, pictures):
    refuse = pytest.MonkeyPatch()  # everything offline: the preset builds its tokenizer without a network
    refuse.setattr(socket.socket, "connect", _no_network)
    try:
        with TestBot(data_dir=tmp_path_factory.mktemp("data"), channel_id="general",
                     clip_model="tiny-multilingual") as test_bot:
            for name in COLORS:  # pictures only: the ranking below is CLIP's alone
                reply = test_bot.ask(f"/post {pictures[name]}")
                assert not reply.error, reply.text
            yield test_bot
    finally:
        refuse.undo()


def _no_network(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        raise AssertionError(f"tried to reach {address}")
    return _real_connect(sock, address)


_real_connect = socket.socket.connect


@pytest.fixture(scope="module")
def model(tmp_path_factory):  # its own copy, tokenizer built again in its own cache
    return load_clip("tiny-multilingual", device="cpu", cache_dir=tmp_path_factory.mktemp("models"))


def test_search_in_other_scripts_ranks_as_the_model_does(bot, model, pictures):
    order = list(COLORS)
    with torch.no_grad():
        images = model.encode_images([Image.open(pictures[name]).convert("RGB") for name in order])
    seen = []
    for query in QUERIES:
        reply = bot.ask(f"/search {query}")
        assert not reply.error, reply.text
        results = reply.data["results"]
        assert len(results) == len(COLORS)
        expected = (images @ model.encode_texts([query])[0]).tolist()
        for result in results:  # posts are messages 1..4, in COLORS order
            assert result["score"] == pytest.approx(expected[int(result["message_id"]) - 1], abs=3e-3)
        seen.append(tuple(round(r["score"], 4) for r in results))
    assert len(set(seen)) == len(QUERIES)  # each script reached the model as its own text


def test_whatis_with_labels_in_other_scripts(bot, model, pictures):
    reply = bot.ask(f"/whatis {pictures['blue']} labels: {', '.join(LABELS)}")
    assert not reply.error, reply.text
    scores = {entry["label"]: entry["score"] for entry in reply.data["labels"]}
    assert sorted(scores) == sorted(LABELS)  # each label comes back as written
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():  # prompt ensembling, recomputed: mean of the normalised prompt embeddings
        columns = torch.stack([model.encode_texts([t(label) for t in PROMPT_TEMPLATES]).mean(dim=0)
                               for label in LABELS])
        image = model.encode_images([Image.open(pictures["blue"]).convert("RGB")])[0]
        expected = (model.logit_scale * (torch.nn.functional.normalize(columns, dim=-1) @ image)).softmax(dim=0)
    for label, probability in zip(LABELS, expected.tolist()):
        assert scores[label] == pytest.approx(probability, abs=2e-3)
    assert max(scores.values()) - min(scores.values()) > 1e-3  # not one <unk> embedding for every label
    assert "tiny-multilingual is a random test model" in reply.text
