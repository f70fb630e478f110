"""The zero-shot pipeline against open_clip's reference on the same seeded random model."""

import open_clip
import pytest
import torch
from PIL import Image

from engine.models.clip import IMAGENET_CLASSNAMES, PROMPT_TEMPLATES, load_clip
from plugins.whatis import pipeline

LABELS = list(IMAGENET_CLASSNAMES[:12]) + ["a whiteboard sketch", "a red square"]


@pytest.fixture(scope="module")
def clip():
    return load_clip("tiny-test", device="cpu")


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (120, 90))
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(90) for x in range(120)])
    return image


def reference_probs(clip, image, labels):
    """open_clip's zero-shot classifier + the CLIP paper's formula, written independently."""
    classifier = open_clip.build_zero_shot_classifier(
        clip.model, clip.tokenizer, labels, open_clip.OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=5
    )
    with torch.no_grad():
        features = clip.model.encode_image(clip.preprocess(image)[None], normalize=True)
        logits = clip.model.logit_scale.exp() * features @ classifier
    return logits.softmax(dim=-1)[0], classifier


def test_templates_are_the_openai_imagenet_ones():
    assert len(PROMPT_TEMPLATES) == 80 and len(IMAGENET_CLASSNAMES) == 1000
    assert [t("cat") for t in PROMPT_TEMPLATES] == [t("cat") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]


def test_equivalent_to_open_clip_zero_shot_classifier(clip, picture):
    expected, classifier = reference_probs(clip, picture, LABELS)
    matrix = pipeline.encode_labels(clip, LABELS, PROMPT_TEMPLATES)
    torch.testing.assert_close(matrix, classifier, rtol=1e-4, atol=1e-5)

    result = pipeline.classify(clip, picture, LABELS, top=len(LABELS))
    ours = {item["label"]: item["score"] for item in result["labels"]}
    for label, prob in zip(LABELS, expected.tolist()):
        assert ours[label] == pytest.approx(prob, rel=1e-4, abs=1e-6)
    # not vacuous: the random model does tell the labels apart
    assert expected.max() / expected.min() > 1.05
    assert [item["label"] for item in result["labels"]][0] == LABELS[int(expected.argmax())]


def test_result_shape_and_order(clip, picture):
    result = pipeline.classify(clip, picture, LABELS, top=5)
    assert set(result) == {"model", "labels", "meaningless"}
    assert result["model"] == "tiny-test" and result["meaningless"] is True
    scores = [item["score"] for item in result["labels"]]
    assert len(scores) == 5 and scores == sorted(scores, reverse=True)
    assert all(0 <= s <= 1 for s in scores)


def test_label_matrix_cached_in_memory_and_on_disk(clip, tmp_path, monkeypatch):
    labels = ["cat", "dog", "a spreadsheet"]
    calls = []
    real = pipeline.encode_labels
    monkeypatch.setattr(pipeline, "encode_labels", lambda *a: calls.append(1) or real(*a))
    first = pipeline.label_matrix(clip, labels, cache_dir=tmp_path)
    assert pipeline.label_matrix(clip, labels, cache_dir=tmp_path) is first
    assert len(calls) == 1 and len(list(tmp_path.glob("*.pt"))) == 1

    pipeline._memory.clear()  # a fresh worker process: the disk copy is used
    again = pipeline.label_matrix(clip, labels, cache_dir=tmp_path)
    assert len(calls) == 1
    torch.testing.assert_close(again, first)

    # different labels or a different model fingerprint are different entries
    pipeline.label_matrix(clip, labels + ["a boat"], cache_dir=tmp_path)
    assert len(calls) == 2


def test_torn_cache_file_is_recomputed(clip, tmp_path):
    labels = ["north", "south"]
    pipeline._memory.clear()
    good = pipeline.label_matrix(clip, labels, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.pt")
    cached.write_bytes(b"torn")
    pipeline._memory.clear()
    torch.testing.assert_close(pipeline.label_matrix(clip, labels, cache_dir=tmp_path), good)
