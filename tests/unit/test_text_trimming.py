"""Text embeddings on a token prefix (each batch cut to its longest prompt) equal open_clip's own
full-context `encode_text`, on the seeded tiny preset, on a real architecture with random
weights, and on tower variants; towers that cannot be cut fall back to the full context."""

import json

import pytest
import torch

from engine.models import clip as clip_module
from engine.models.clip import IMAGENET_CLASSNAMES, PROMPT_TEMPLATES, load_clip
from engine.models.presets import preset_config_path

LONG = "a photo of " + " and ".join(IMAGENET_CLASSNAMES[:40])  # over 77 tokens: truncated, EOT at the end
TEXTS = [t(label) for label in ("tench", "great white shark", "a whiteboard sketch") for t in PROMPT_TEMPLATES[:9]]
TEXTS += ["x", "", LONG, "a", "an embarrassingly long but not truncated caption about a small red fox"]


def reference(clip, texts):
    """open_clip's encode_text over the tokenizer's full context, one call."""
    with torch.no_grad():
        return clip.model.encode_text(clip.tokenizer(texts).to(clip.device), normalize=True).float()


def transformer_lengths(clip):
    """Sequence lengths the text transformer really runs on (a forward pre-hook records them)."""
    seen: list[int] = []
    transformer = clip.model.transformer if hasattr(clip.model, "token_embedding") else clip.model.text.transformer
    handle = transformer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    return seen, handle


def check_trimmed_equals_full(clip, texts=TEXTS, batch_size=4):
    assert clip.text_tower is not None
    seen, handle = transformer_lengths(clip)
    try:
        ours = clip.encode_texts(texts, batch_size=batch_size)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, reference(clip, texts), rtol=1e-4, atol=2e-6)
    # not vacuous: most batches ran on far fewer than 77 positions, the longest on all of them
    assert min(seen) < 12 and max(seen) == 77 and sum(seen) < 0.5 * 77 * len(seen)


@pytest.fixture(scope="module")
def tiny():
    return load_clip("tiny-test", device="cpu")


def test_tiny_preset_trimmed_equals_full_context(tiny):
    check_trimmed_equals_full(tiny)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_any_batch_size_gives_the_same_embeddings(tiny, batch_size):
    torch.testing.assert_close(tiny.encode_texts(TEXTS, batch_size=batch_size), reference(tiny, TEXTS),
                               rtol=1e-4, atol=2e-6)


def test_vit_b_32_random_weights_trimmed_equals_full_context():
    clip = load_clip("ViT-B-32:random", device="cpu")
    check_trimmed_equals_full(clip, TEXTS[::3] + TEXTS[-5:], batch_size=3)


def _variant(tmp_path, name, **text_cfg):
    config = json.loads(preset_config_path("tiny-test").read_text())
    custom_text = text_cfg.pop("custom_text", False)
    config["text_cfg"].update(text_cfg)
    if custom_text:
        config["custom_text"] = True
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return load_clip(f"{path}:random", device="cpu")


@pytest.mark.parametrize("name, text_cfg", [
    ("tiny-custom-text", {"custom_text": True}),  # CustomTextCLIP + causal TextTransformer
    ("tiny-eos-pool", {"pool_type": "eos", "eos_id": 49407}),
])
def test_trimmable_tower_variants(tmp_path, name, text_cfg):
    check_trimmed_equals_full(_variant(tmp_path, name, **text_cfg))


@pytest.mark.parametrize("name, text_cfg", [
    ("tiny-bidirectional", {"no_causal_mask": True, "pool_type": "last"}),
    ("tiny-last-pool", {"pool_type": "last"}),
    ("tiny-cls-token", {"custom_text": True, "embed_cls": True}),
])
def test_untrimmable_towers_run_at_full_length(tmp_path, name, text_cfg):
    clip = _variant(tmp_path, name, **text_cfg)
    assert clip.text_tower is None
    seen, handle = transformer_lengths(clip)
    try:
        ours = clip.encode_texts(TEXTS, batch_size=5)
    finally:
        handle.remove()
    torch.testing.assert_close(ours, reference(clip, TEXTS), rtol=1e-4, atol=2e-6)
    assert set(seen) <= {77, 78}  # 78: the appended CLS token


def test_a_tower_that_does_not_reproduce_open_clip_is_not_used(tiny, monkeypatch):
    real = clip_module._TextTower.encode
    monkeypatch.setattr(clip_module._TextTower, "encode", lambda self, tokens: real(self, tokens) * 0.5 + 0.1)
    assert clip_module._checked_text_tower(tiny.model, tiny.tokenizer, tiny.device) is None
    monkeypatch.setattr(clip_module._TextTower, "encode", real)
    assert clip_module._checked_text_tower(tiny.model, tiny.tokenizer, tiny.device) is not None


def test_progress_counts_every_text_once(tiny):
    calls = []
    tiny.encode_texts(TEXTS, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert calls[-1] == (len(TEXTS), len(TEXTS)) and len(calls) == -(-len(TEXTS) // 4)
    assert tiny.encode_texts([]).shape == (0, tiny.embed_dim)


def test_batch_sizes_per_device():
    assert clip_module.text_batch_size(torch.device("cuda")) > clip_module.text_batch_size(torch.device("cpu"))
