"""/describe's pipeline against a brute-force open_clip ranking on the same seeded random model,
its vocabulary files and the prompts it composes."""

import json
import logging

import pytest
import torch
from PIL import Image

from bot.actions import DISCORD_LIMIT, decode_action, encode_action
from engine.models import matrix_cache
from plugins.describe import compose, pipeline
from plugins.describe.vocab import KINDS, SHIPPED_DIR, load_vocabulary, phrase, read_terms
from plugins.imagine.prompts import parse_prompts


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (120, 90))
    image.putdata([((x * 5) % 256, (y * 13) % 256, (x + y) % 256) for y in range(90) for x in range(120)])
    return image


def brute_force_ranking(clip, image, vocabulary):
    """kind -> [(term, cosine)] best first, straight from the open_clip model's encoders (no batching,
    no cache), one term at a time."""
    model = clip.model
    with torch.no_grad():
        features = model.encode_image(clip.preprocess(image)[None], normalize=True)[0]
        ranked = {}
        for kind in KINDS:
            scored = []
            for term in vocabulary.terms[kind]:
                text = model.encode_text(clip.tokenizer([phrase(kind, term)]), normalize=True)[0]
                scored.append((term, float(features @ text)))
            ranked[kind] = sorted(scored, key=lambda pair: pair[1], reverse=True)
    return ranked


def test_ranking_equals_a_brute_force_open_clip_ranking(clip, picture):
    vocabulary = load_vocabulary()
    expected = brute_force_ranking(clip, picture, vocabulary)
    ours = pipeline.rank_terms(clip, picture, vocabulary)
    for kind in KINDS:
        ref = expected[kind]
        # not vacuous: the random model tells the terms apart (no near-ties to make order a coin toss)
        gaps = [a[1] - b[1] for a, b in zip(ref, ref[1:])]
        assert ref[0][1] - ref[-1][1] > 0.01
        assert min(gaps) > 1e-6, kind
        assert [t.term for t in ours[kind]] == [term for term, _ in ref], kind
        for term, (_, cosine) in zip(ours[kind], ref):
            assert term.kind == kind and term.score == pytest.approx(cosine, abs=1e-5)


def test_description_lists_the_best_terms_per_kind_and_four_button_sized_prompts(clip, picture):
    vocabulary = load_vocabulary()
    ranked = pipeline.rank_terms(clip, picture, vocabulary)
    result = pipeline.describe(clip, picture, vocabulary, per_kind=2)
    assert [(t.kind, t.term) for t in result.terms] == [(k, t.term) for k in KINDS for t in ranked[k][:2]]
    assert result.model == "tiny-test" and result.meaningless is True
    assert len(result.prompts) == 4 and len(set(result.prompts)) == 4
    best = {kind: phrase(kind, ranked[kind][0].term) for kind in KINDS}
    assert result.prompts[0].startswith(f"{best['mediums']} of {best['subjects']}")
    assert ranked["subjects"][1].term in result.prompts[2]  # the runner-up subject
    for prompt in result.prompts:
        action = compose.imagine_action(prompt)
        assert decode_action(encode_action(action, limit=DISCORD_LIMIT)).options == {"prompt": prompt}
        assert len(parse_prompts(prompt)) == 1  # one /imagine prompt, no | or :weight in it
    wire = result.to_json()
    assert set(wire["terms"][0]) == {"term", "kind", "score"}


def test_compose_keeps_the_most_telling_kinds_that_fit_the_button():
    ranked = {"subjects": ["a fox"], "mediums": ["an oil painting"], "styles": ["romanticism"],
              "artists": ["by J. M. W. Turner"], "lighting": ["dramatic lighting"], "colours": ["muted colours"],
              "framing": ["a wide shot"]}
    first = compose.compose(ranked)[0]
    # lighting and colours would overflow after the artist; the shorter framing still fits
    assert first == "an oil painting of a fox, romanticism, by J. M. W. Turner, a wide shot"
    assert len(first) <= compose.prompt_budget() < len(first + ", muted colours")
    # one term per kind: every candidate falls back to it; the short one leaves the artist out
    assert compose.compose(ranked)[1] == first
    assert compose.compose(ranked)[3] == "an oil painting of a fox, romanticism, dramatic lighting, muted colours"
    long_subject = ranked | {"subjects": ["a lighthouse on a cliff above a stormy sea"]}
    assert compose.compose(long_subject)[0] == "an oil painting of a lighthouse on a cliff above a stormy sea"
    assert compose.compose({"subjects": ["word " * 20]})[0] == ("word " * 14).strip()  # cut at a word


def test_shipped_vocabulary_has_every_kind_and_admins_add_terms(tmp_path, caplog):
    shipped = load_vocabulary()
    assert set(shipped.terms) == set(KINDS) and all(len(shipped.terms[k]) >= 20 for k in KINDS)
    assert {path.stem for path in SHIPPED_DIR.glob("*.txt")} == set(KINDS)

    extra = tmp_path / "vocab"
    extra.mkdir()
    (extra / "subjects.txt").write_text("# our office\n  a   whiteboard  robot \nA DOG\n\na fox | blurry\n"
                                        "a cat:2\n" + "x" * 80 + "\n")
    (extra / "subject.txt").write_text("a typo in the file name\n")
    with caplog.at_level(logging.WARNING):
        merged = load_vocabulary(extra)
    subjects = merged.terms["subjects"]
    assert subjects[: len(shipped.terms["subjects"])] == shipped.terms["subjects"]
    assert subjects[len(shipped.terms["subjects"]):] == ("a whiteboard robot",)  # "A DOG" repeats "a dog"
    assert "a typo in the file name" not in {t for ts in merged.terms.values() for t in ts}
    assert "subject.txt ignored" in caplog.text and "line 5 skipped" in caplog.text
    assert merged.terms["mediums"] == shipped.terms["mediums"]
    assert read_terms(extra / "subject.txt") == ["a typo in the file name"]


def test_vocabulary_matrix_is_cached_in_memory_and_on_disk(clip, tmp_path, picture):
    vocabulary = load_vocabulary()
    calls = []
    real = clip.encode_texts

    class Counting:  # the same model, counting its text encodes
        def __getattr__(self, name):
            return getattr(clip, name)

        def encode_texts(self, texts, **kwargs):
            calls.append(len(texts))
            return real(texts, **kwargs)

    counting = Counting()
    matrix_cache.memory.clear()  # earlier tests ranked the same vocabulary in this process
    first = pipeline.vocabulary_matrix(counting, vocabulary, tmp_path)
    assert pipeline.vocabulary_matrix(counting, vocabulary, tmp_path) is first
    assert calls == [len(vocabulary.entries())] and len(list(tmp_path.glob("*.pt"))) == 1
    matrix_cache.memory.clear()  # a fresh worker: the disk copy is used
    torch.testing.assert_close(pipeline.vocabulary_matrix(counting, vocabulary, tmp_path), first)
    assert len(calls) == 1

    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "styles.txt").write_text("office doodle\n")
    pipeline.vocabulary_matrix(counting, load_vocabulary(extra), tmp_path)  # an admin's edit: a new matrix
    assert len(calls) == 2 and len(list(tmp_path.glob("*.pt"))) == 2
    json.dumps(pipeline.describe(counting, picture, vocabulary, per_kind=1).to_json())
