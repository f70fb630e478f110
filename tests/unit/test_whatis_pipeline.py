"""The zero-shot pipeline against open_clip's reference on the same seeded random model."""

import threading
import time

import open_clip
import pytest
import torch
from PIL import Image

from engine.models.clip import IMAGENET_CLASSNAMES, PROMPT_TEMPLATES
from plugins.whatis import pipeline
from plugins.whatis.tasks import BuildProgress

LABELS = list(IMAGENET_CLASSNAMES[:12]) + ["a whiteboard sketch", "a red square"]


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
    ours = {item.label: item.score for item in result.labels}
    for label, prob in zip(LABELS, expected.tolist()):
        assert ours[label] == pytest.approx(prob, rel=1e-4, abs=1e-6)
    # not vacuous: the random model does tell the labels apart
    assert expected.max() / expected.min() > 1.05
    assert result.best.label == LABELS[int(expected.argmax())]


def test_result_shape_and_order(clip, picture):
    result = pipeline.classify(clip, picture, LABELS, top=5)
    wire = result.to_json()  # what the task's job record and `--json` carry
    assert set(wire) == {"model", "labels", "meaningless", "unsure", "picture", "explain", "method", "taught"}
    assert set(wire["labels"][0]) == {"label", "score"}
    assert result.model == "tiny-test" and result.meaningless is True
    scores = [item.score for item in result.labels]
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


def _entries(cache_dir):
    return {path.stem for path in cache_dir.glob("*.pt")}


def test_disk_cache_is_capped_least_recently_used_first(clip, tmp_path):
    pipeline._memory.clear()
    sets = [["red", "green"], ["up", "down"], ["hot", "cold"], ["wet", "dry"]]
    keys = [pipeline._cache_key(clip, labels, PROMPT_TEMPLATES) for labels in sets]
    pipeline.label_matrix(clip, sets[0], cache_dir=tmp_path)
    size = (tmp_path / f"{keys[0]}.pt").stat().st_size
    cap = 2 * size + size // 2  # room for two matrices
    time.sleep(0.02)  # distinct mtimes even on coarse file-system clocks
    pipeline.label_matrix(clip, sets[1], cache_dir=tmp_path, cache_bytes=cap)
    assert _entries(tmp_path) == {keys[0], keys[1]}

    time.sleep(0.02)
    pipeline._memory.clear()  # a fresh process uses set 0 from disk: now it is the recent one
    pipeline.label_matrix(clip, sets[0], cache_dir=tmp_path, cache_bytes=cap)
    time.sleep(0.02)
    pipeline.label_matrix(clip, sets[2], cache_dir=tmp_path, cache_bytes=cap)
    assert _entries(tmp_path) == {keys[0], keys[2]}  # set 1, the least recently used, went
    assert not (tmp_path / f".{keys[1]}.lock").exists()

    time.sleep(0.02)
    pipeline.label_matrix(clip, sets[2], cache_dir=tmp_path, cache_bytes=cap)  # a memory hit marks use too
    time.sleep(0.02)
    pipeline.label_matrix(clip, sets[3], cache_dir=tmp_path, cache_bytes=cap)
    assert _entries(tmp_path) == {keys[2], keys[3]}

    # a cap smaller than one matrix keeps just the newest one
    assert pipeline.prune_cache(tmp_path, 0, keep=keys[3]) == size
    assert _entries(tmp_path) == {keys[3]}


def test_concurrent_builds_of_one_matrix_compute_it_once(clip, tmp_path, monkeypatch):
    """Two workers (threads here; separate processes lock the same file) asking for the same new
    label set: one computes, the other waits for it (and says so) and reads it from disk."""
    pipeline._memory.clear()
    real, calls, started = pipeline.encode_labels, [], threading.Event()

    def slow_encode(*args):
        calls.append(1)
        started.set()
        time.sleep(0.5)
        return real(*args)

    monkeypatch.setattr(pipeline, "encode_labels", slow_encode)
    labels, waited, results = ["left", "right", "centre"], [], []
    first = threading.Thread(target=lambda: results.append(pipeline.label_matrix(clip, labels, cache_dir=tmp_path)))
    first.start()
    assert started.wait(30)
    pipeline._memory.clear()  # as if the second request ran in another process
    second = pipeline.label_matrix(clip, labels, cache_dir=tmp_path, progress=lambda d, t: waited.append((d, t)))
    first.join()
    assert len(calls) == 1 and waited and set(waited) == {(0, 3 * len(PROMPT_TEMPLATES))}
    torch.testing.assert_close(second, results[0])


def test_build_progress_is_quiet_for_quick_builds_then_once_a_second():
    now, lines = [100.0], []
    report = BuildProgress("ImageNet-1k labels", lambda d, t, message: lines.append(message), clock=lambda: now[0])
    report(10, 1000)  # within the first second: nothing
    now[0] += 1.5
    report(20, 1000)
    report(30, 1000)  # within a second of the last report
    now[0] += 1.0
    report(350, 1000)
    now[0] += 5.0
    report(352, 1000)  # same percentage: nothing new to say
    report(1000, 1000)  # the end of a build that reported is always said
    report(0, 1000)  # waiting for another process is said at once
    assert lines == ["preparing ImageNet-1k labels: 2%", "preparing ImageNet-1k labels: 35%",
                     "preparing ImageNet-1k labels: 100%", "preparing ImageNet-1k labels: 0%"]

    quick = []
    report = BuildProgress("x", lambda d, t, message: quick.append(message), clock=lambda: now[0])
    report(500, 1000)
    report(1000, 1000)
    assert quick == []  # a quick build says nothing, not even 100%
