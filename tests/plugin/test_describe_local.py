"""/describe through the local chat on the embedded engine (real worker thread, tiny-test CLIP):
the answer, its Imagine buttons as typed commands, the admins' vocabulary folder, mistakes."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from bot.adapters.local import action_command
from engine.models.clip import load_clip
from plugins.describe import pipeline
from plugins.describe.vocab import KINDS, Vocabulary, load_vocabulary
from tests.support.chat import final_of, say

CANDIDATES = [f"a {colour} {thing}" for colour in ("red", "crimson", "scarlet", "pink", "orange", "rusty", "dark")
              for thing in ("square", "wall", "flag", "box", "card", "tile", "door", "sign", "brick")]


def expected(picture_path, vocabulary, per_kind):
    """What the pipeline says about this picture, computed here on the same seeded model."""
    with Image.open(picture_path) as image:
        return pipeline.describe(load_clip("tiny-test", device="cpu"), image.convert("RGB"), vocabulary,
                                 per_kind=per_kind).to_json()


@pytest.fixture
def admin_vocabulary(data_dir, red_png):
    """The default CLIPBOT_DESCRIBE_VOCAB_DIR with the 3 candidate subjects the random model finds
    closest to the picture (so they beat shipped ones, and the answer can show them)."""
    with Image.open(red_png) as image:
        ranked = pipeline.rank_terms(load_clip("tiny-test", device="cpu"), image.convert("RGB"),
                                     Vocabulary({"subjects": tuple(CANDIDATES)}))
    added = [t.term for t in ranked["subjects"][:3]]
    folder = data_dir / "describe" / "vocab"
    folder.mkdir(parents=True)
    (folder / "subjects.txt").write_text("# added by an admin\n" + "\n".join(added) + "\n")
    yield folder, added
    shutil.rmtree(folder)


def test_describe_answers_four_prompts_each_with_an_imagine_button_that_draws_it(local, red_png):
    final = final_of(say(local, f"/describe {red_png}"))
    reference = expected(red_png, load_vocabulary(), per_kind=3)  # CLIPBOT_DESCRIBE_TERMS defaults to 3
    assert final.data == {"prompts": reference["prompts"], "terms": reference["terms"]}
    assert len(final.data["prompts"]) == 4 and len(final.data["terms"]) == 3 * len(KINDS)
    assert [t["kind"] for t in final.data["terms"]] == [k for k in KINDS for _ in range(3)]
    assert [(a.label, a.command, a.options) for a in final.actions] == [
        (f"Imagine this #{i}", "imagine", {"prompt": p}) for i, p in enumerate(final.data["prompts"], 1)]
    assert all(p in final.text for p in final.data["prompts"])
    assert "tiny-test is a random test model" in final.text
    printed = local.buffer.getvalue()
    assert f"[Imagine this #1] /imagine prompt: {final.data['prompts'][0]}" in printed

    drawn = final_of(say(local, action_command(final.actions[1]) + " steps: 2 size: 32"))
    assert drawn.data["size"] == "32x32" and final.data["prompts"][1] in drawn.text


def test_an_admins_vocabulary_folder_adds_terms(local, red_png, admin_vocabulary):
    folder, added = admin_vocabulary
    shipped_only = expected(red_png, load_vocabulary(), per_kind=10)
    assert added[0] not in {t["term"] for t in shipped_only["terms"]}
    final = final_of(say(local, f"/describe {red_png} terms: 10"))
    assert final.data["terms"] == expected(red_png, load_vocabulary(folder), per_kind=10)["terms"]
    subjects = [t["term"] for t in final.data["terms"] if t["kind"] == "subjects"]
    assert added[0] in subjects, "an added term is ranked with the shipped ones"


@pytest.mark.parametrize("line, message", [
    ("/describe", "/describe needs 'image'"),
    ("/describe {img} terms: 11", "terms must be between 1 and 10"),
    ("/describe {img} terms: lots", "must be a whole number"),
])
def test_mistakes_get_one_clear_answer(local, red_png, line, message):
    reply = say(local, line.format(img=red_png))[-1]
    assert reply.error and message in reply.text, reply.text
