"""The ONNX Runtime CPU backend (engine/models/cpu_backend.py) on the seeded tiny preset: the same
embeddings and the same /whatis answers as torch eager, one export per weights (kept, and made
again when the weights change), `auto` choosing it, and torch taking over from a broken export."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnxruntime")

from engine.models import cpu_backend  # noqa: E402
from engine.models.clip import IMAGENET_CLASSNAMES, backend_status, load_clip  # noqa: E402
from plugins.whatis import pipeline  # noqa: E402

PROMPTS = ["x", "", "a photo of a dog.", "a photo of " + " and ".join(IMAGENET_CLASSNAMES[:40]),
           "an embarrassingly long but not truncated caption about a small red fox", "itap of a cat."] * 3
LABELS = list(IMAGENET_CLASSNAMES[:12])


def pictures(tmp_path: Path) -> list:
    from PIL import Image, ImageDraw

    out = []
    for i in range(8):  # gradients, rotations and shapes: distinct, fixed pictures
        image = Image.merge("RGB", [Image.linear_gradient("L").rotate(25 * i + k * 90) for k in range(3)])
        ImageDraw.Draw(image).ellipse((10 * i, 20, 60 + 15 * i, 200), fill=(40 * i, 255 - 30 * i, 90))
        out.append(image.resize((96 + 8 * i, 80)))
    return out


def exports(cache: Path) -> list[str]:
    root = cpu_backend.export_root(cache)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "served")))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def fast(cache):
    return load_clip("tiny-test", device="cpu", cache_dir=cache, backend="onnx")


@pytest.fixture(scope="module")
def eager():
    return load_clip("tiny-test", device="cpu", backend="torch")


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


def test_onnx_embeddings_match_eager(fast, eager, tmp_path):
    assert fast.backend == "onnx" and fast.fast is not None and fast.fast.has_text, fast.backend_reason
    assert eager.backend == "torch" and eager.fast is None
    images = pictures(tmp_path)
    assert cosines(fast.encode_images(images, batch_size=3), eager.encode_images(images)).min() >= 0.9999
    ours = fast.encode_texts(PROMPTS, batch_size=4)  # trimmed batches through the dynamic-length graph
    with torch.no_grad():  # open_clip's own encode_text over the full 77 tokens: the reference
        full = eager.model.encode_text(eager.tokenizer(PROMPTS), normalize=True).float()
    assert cosines(ours, full).min() >= 0.9999


def test_whatis_classify_gives_the_same_top1_on_both_backends(fast, eager, tmp_path):
    # The labels in reverse order for onnx: another label-matrix key, so each backend encodes its own.
    for image in pictures(tmp_path):
        a = pipeline.classify(fast, image, LABELS[::-1], top=3)
        b = pipeline.classify(eager, image, LABELS, top=3)
        assert a.labels[0].label == b.labels[0].label
        assert a.labels[0].score == pytest.approx(b.labels[0].score, abs=1e-3)


def test_second_load_reuses_the_export(fast, cache, caplog):
    before = exports(cache)
    verdict = cpu_backend.export_root(cache) / before[0] / "verdict.json"
    stamp = verdict.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="engine.models.cpu_backend"):
        again = load_clip("tiny-test", device="cpu", cache_dir=cache, backend="onnx")
    assert again.backend == "onnx"
    assert exports(cache) == before and verdict.stat().st_mtime_ns == stamp
    assert not [r for r in caplog.records if "exporting" in r.getMessage()]


def test_changed_weights_are_exported_again(eager, tmp_path):
    weights, cache = tmp_path / "tiny.pt", tmp_path / "models"
    torch.save(eager.model.state_dict(), weights)
    first = load_clip(f"tiny-test:{weights}", device="cpu", cache_dir=cache, backend="onnx")
    assert first.backend == "onnx" and len(exports(cache)) == 1
    state = eager.model.state_dict()
    state["visual.proj"] = state["visual.proj"] * 1.5 + 0.01
    torch.save(state, weights)
    second = load_clip(f"tiny-test:{weights}", device="cpu", cache_dir=cache, backend="onnx")
    assert second.backend == "onnx" and len(exports(cache)) == 2
    image = pictures(tmp_path)[:2]
    changed = load_clip(f"tiny-test:{weights}", device="cpu", backend="torch").encode_images(image)
    assert cosines(second.encode_images(image), changed).min() >= 0.9999  # the new weights' answers


def test_auto_picks_onnx_on_a_cpu_and_models_list_says_why(fast, cache, tmp_path):
    fresh = tmp_path / "fresh"
    assert backend_status("tiny-test", device="cpu", cache_dir=fresh, backend="auto")[0] == "onnx"
    assert "first load exports" in backend_status("tiny-test", device="cpu", cache_dir=fresh)[1]
    auto = load_clip("tiny-test", device="cpu", cache_dir=cache, backend="auto")
    assert auto.backend == "onnx" and "equivalence check passed" in auto.backend_reason
    name, why = backend_status("tiny-test", device="cpu", cache_dir=cache, backend="auto")
    assert name == "onnx" and exports(cache)[0] in why and "passed" in why
    assert backend_status("tiny-test", device="cpu", cache_dir=cache, backend="torch") == (
        "torch", "CLIPBOT_CLIP_BACKEND=torch")


def test_a_broken_export_falls_back_to_torch_with_a_log_line(fast, eager, cache, tmp_path, caplog):
    broken = tmp_path / "models"
    shutil.copytree(cache, broken)
    (cpu_backend.export_root(broken) / exports(broken)[0] / "image.onnx").write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING, logger="engine.models.clip"):
        clip = load_clip("tiny-test", device="cpu", cache_dir=broken, backend="auto")
    assert clip.backend == "torch" and clip.fast is None and "does not load" in clip.backend_reason
    assert any("runs on torch" in r.getMessage() for r in caplog.records)
    images = pictures(tmp_path)[:3]
    torch.testing.assert_close(clip.encode_images(images), eager.encode_images(images))


def test_an_unknown_backend_is_a_clear_error():
    from engine.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="Unknown CLIP backend 'tensorrt': use auto, torch, onnx"):
        load_clip("tiny-test", device="cpu", backend="tensorrt")
