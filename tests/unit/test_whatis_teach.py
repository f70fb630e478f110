"""Taught labels and honest unknowns in the /whatis pipeline, on the tiny seeded model."""

import pytest
import torch

from plugins.whatis import pipeline
from tests.support.mascot import mascot

LABELS = ["cat", "dog", "person", "mascot"]


@pytest.fixture(scope="module")
def examples(clip):
    return {"mascot": clip.encode_images([mascot(shift) for shift in range(3)])}


def classify(clip, picture, examples=None):
    return pipeline.classify(clip, picture, LABELS, top=len(LABELS), examples=examples, threshold=0.1, margin=2.0)


def test_a_taught_label_wins_on_a_picture_like_its_examples_where_text_alone_does_not(clip, examples):
    probe = mascot(5)  # not one of the examples
    text_only = classify(clip, probe)
    assert text_only.best.label != "mascot" and text_only.taught == ()
    taught = classify(clip, probe, examples)
    assert taught.best.label == "mascot" and taught.taught == ("mascot",)
    assert not taught.unsure  # it fits far better than pictures of nothing


def test_pictures_of_nothing_are_unsure_and_a_taught_label_does_not_take_them(clip, examples):
    results = [classify(clip, picture, examples)  # another seed: not the calibration set itself
               for picture in pipeline.background_pictures(2 * clip.image_size, count=12, seed=7)]
    assert all(r.unsure for r in results), [r.best for r in results if not r.unsure]
    assert all(r.best.label != "mascot" for r in results)


def test_text_labels_keep_clips_own_probabilities(clip, examples):
    probe = mascot(5)
    plain = pipeline.classify(clip, probe, LABELS, top=4)
    calibrated = classify(clip, probe)  # a background for unsure only: the scores are CLIP's
    assert [(s.label, s.score) for s in plain.labels] == [(s.label, s.score) for s in calibrated.labels]


def test_text_weight_one_is_text_alone(clip, examples):
    probe = mascot(5)
    text_only = pipeline.classify(clip, probe, LABELS, top=4)
    weighted = pipeline.classify(clip, probe, LABELS, top=4, examples=examples, text_weight=1.0)
    assert [(s.label, s.score) for s in weighted.labels] == [(s.label, s.score) for s in text_only.labels]


def test_prototype_column_mixes_text_and_examples(clip, examples):
    text = pipeline.label_matrix(clip, LABELS)
    mixed = pipeline.with_prototypes(text, LABELS, examples, 0.25)
    shots = torch.nn.functional.normalize(examples["mascot"], dim=-1).mean(dim=0)
    expected = 0.25 * text[:, 3] + 0.75 * shots / shots.norm()
    torch.testing.assert_close(mixed[:, 3], expected / expected.norm())
    torch.testing.assert_close(mixed[:, :3], text[:, :3])


def test_background_is_fixed_and_vectors_round_trip(clip):
    first, again = pipeline.background_pictures(64), pipeline.background_pictures(64)
    assert [p.tobytes() for p in first] == [p.tobytes() for p in again] and len(first) == pipeline.BACKGROUND_PICTURES
    vector = clip.encode_images([mascot(1)])[0]
    torch.testing.assert_close(pipeline.decode_vector(pipeline.encode_vector(vector)), vector, atol=1e-3, rtol=1e-3)


def test_background_embeddings_are_cached_on_disk(clip, tmp_path, monkeypatch):
    pipeline._memory.clear()
    first = pipeline.background_features(clip, tmp_path)
    assert first.shape == (pipeline.BACKGROUND_PICTURES, clip.embed_dim) and len(list(tmp_path.glob("*.pt"))) == 1
    pipeline._memory.clear()  # a fresh worker process: read from disk, not encoded
    monkeypatch.setattr(clip, "encode_images", lambda images: pytest.fail("encoded again"))
    torch.testing.assert_close(pipeline.background_features(clip, tmp_path), first)
