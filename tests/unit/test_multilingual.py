"""Multilingual CLIP models (open_clip configs whose text tower is a Hugging Face model, as the
`xlm-roberta-base-ViT-B-32` family): the `tiny-multilingual` preset with a tokenizer trained offline,
text embeddings equal to open_clip's own encode_text, the text tower files found in a Hugging Face
cache without any network, clear errors when they are not there, and the ONNX backend."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
from open_clip.tokenizer import HFTokenizer

from engine.errors import ModelUnavailable
from engine.models import cpu_backend, hf_text
from engine.models.clip import backend_status, load_clip, pull_clip, weights_here
from engine.models.presets import preset_config_path

GERMAN, JAPANESE, ARABIC = "ein Foto einer Katze", "猫の写真", "صورة قطة"
LONG = " ".join(["ein rotes Auto auf der Straße"] * 20)  # far over 77 tokens: truncated
TEXTS = [GERMAN, JAPANESE, ARABIC, "a photo of a dog", "", "x", LONG, "設計レビューの図", "مربع أخضر ودائرة زرقاء",
         "Straßenbahn, Brücke, Fahrrad, Regenschirm"]
HUB_NAME = "example-org/tiny-xlm-r"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def tiny(models):
    return load_clip("tiny-multilingual", device="cpu", cache_dir=models)


@pytest.fixture
def offline(monkeypatch):
    """No connection to any host: a test under it proves its code path never touches the network."""
    real = socket.socket.connect

    def refuse(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"tried to reach {address}")
        return real(sock, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)


def reference(clip, folder, texts):
    """open_clip's encode_text over the full context, with open_clip's own HFTokenizer on the folder."""
    with torch.no_grad():
        return clip.model.encode_text(HFTokenizer(str(folder))(texts), normalize=True).float()


def test_texts_in_any_script_embed_as_open_clip_encodes_them(tiny, models):
    folder = hf_text.tiny_multilingual_source(models)
    seen: list[int] = []
    hook = tiny.model.text.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        ours = tiny.encode_texts(TEXTS, batch_size=3)
    finally:
        hook.remove()
    torch.testing.assert_close(ours, reference(tiny, folder, TEXTS), rtol=1e-4, atol=2e-6)
    # trimmed to each batch's longest text, the truncated one at the full 77
    assert type(tiny.text_tower).__name__ == "_PaddedTextTower"
    assert max(seen) == 77 and min(seen) < 12
    assert ours.norm(dim=-1).sub(1).abs().max() < 1e-5
    assert len({tuple(row.tolist()) for row in ours}) == len(TEXTS)  # every text its own embedding


def test_the_tokenizer_is_built_offline_the_same_every_time(tmp_path, offline):
    first = hf_text.tiny_multilingual_source(tmp_path / "a")
    second = hf_text.tiny_multilingual_source(tmp_path / "b")
    for name in ("tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    tokenizer = HFTokenizer(str(first))
    special = tokenizer.tokenizer
    assert (special.bos_token_id, special.pad_token_id, special.eos_token_id, special.unk_token_id) == (0, 1, 2, 3)
    tokens = tokenizer([GERMAN, JAPANESE, ARABIC])
    assert tokens.shape == (3, 77) and (tokens[:, 0] == 0).all()
    for row in tokens:
        used = row[row != 1]
        assert used[-1] == 2 and 3 not in used.tolist()  # ends with </s>; no <unk> in these scripts


def test_seeded_loads_in_parallel_threads_get_the_same_weights(tiny, models):
    loaded = {}
    threads = [threading.Thread(target=lambda i=i: loaded.update({i: load_clip("tiny-multilingual", device="cpu",
                                                                               cache_dir=models)}))
               for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = tiny.model.state_dict()
    for clip in loaded.values():
        state = clip.model.state_dict()
        assert all(torch.equal(state[name], expected[name]) for name in expected)
        assert clip.fingerprint == tiny.fingerprint and clip.fingerprint.startswith("tiny-multilingual|text ")


def test_too_long_reads_the_tokenizers_own_padding(tiny):
    assert tiny.pad_id == 1 and tiny.context_length == 77
    assert not tiny.too_long(JAPANESE) and not tiny.too_long("")
    assert tiny.too_long(LONG)


@pytest.mark.parametrize("pooler", ["cls_pooler", "cls_last_hidden_state_pooler"])
def test_first_token_pooling_trims_too(tmp_path, models, pooler):
    # nllb-clip's kind of tower: pooled at <s>, a linear projection
    config = json.loads(preset_config_path("tiny-multilingual").read_text())
    config["text_cfg"].update(hf_pooler_type=pooler, hf_proj_type="linear")
    path = tmp_path / f"tiny-ml-{pooler}.json"
    path.write_text(json.dumps(config))
    clip = load_clip(f"{path}:random", device="cpu", cache_dir=models)
    assert clip.text_tower is not None
    folder = hf_text.tiny_multilingual_source(models)
    torch.testing.assert_close(clip.encode_texts(TEXTS, batch_size=3), reference(clip, folder, TEXTS),
                               rtol=1e-4, atol=2e-6)


# --- a Hugging Face text tower from the Hub's cache (the xlm-roberta-base-ViT-B-32 family's path) ---


def hub_config(tmp_path: Path) -> Path:
    """A model config like xlm-roberta-base-ViT-B-32's, tiny, whose text tower is named by Hub id."""
    config = json.loads(preset_config_path("tiny-multilingual").read_text())
    config["text_cfg"].update(hf_model_name=HUB_NAME, hf_tokenizer_name=HUB_NAME)
    path = tmp_path / "tiny-hub-xlm-r.json"
    path.write_text(json.dumps(config))
    return path


def fill_hub_cache(cache: Path, source: Path, commit: str = "c" * 40) -> Path:
    """The Hugging Face cache layout `clipbot models pull` leaves for HUB_NAME: refs/main and a snapshot."""
    repo = cache / f"models--{HUB_NAME.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    shutil.copytree(source, snapshot)
    return snapshot


def test_text_tower_files_missing_is_a_clear_error_without_network(tmp_path, offline):
    spec = f"{hub_config(tmp_path)}:random"
    assert not weights_here(spec, cache_dir=tmp_path / "cache")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        load_clip(spec, device="cpu", cache_dir=tmp_path / "cache")
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"text tower files of {HUB_NAME}" in message and "not downloaded" in message
    assert "clipbot models pull" in message and "\n" not in message


def test_a_cached_text_tower_without_a_tokenizer_is_a_clear_error(tmp_path, models, offline):
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(hf_text.tiny_multilingual_source(models) / "config.json", partial)
    fill_hub_cache(tmp_path / "cache", partial)
    spec = f"{hub_config(tmp_path)}:random"
    assert not weights_here(spec, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelUnavailable, match=f"of {HUB_NAME} has no tokenizer .*pull it again"):
        load_clip(spec, device="cpu", cache_dir=tmp_path / "cache")


def test_the_real_multilingual_tag_without_its_files_says_what_to_do(tmp_path, offline):
    spec = "xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k"
    assert not weights_here(spec, cache_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match=r"text tower files of xlm-roberta-base .*clipbot models pull"):
        load_clip(spec, device="cpu", cache_dir=tmp_path)


@pytest.mark.parametrize("env, words", [({"HF_HUB_OFFLINE": "1"}, "offline mode"),
                                        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach 127.0.0.1:9")])
def test_pulling_text_tower_files_offline_fails_quickly(tmp_path, monkeypatch, env, words):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        pull_clip(f"{hub_config(tmp_path)}:random", cache_dir=tmp_path / "cache", progress=False)
    assert time.monotonic() - started < 8
    assert f"Could not download the text tower files of {HUB_NAME}" in str(caught.value)
    assert words in str(caught.value)


def test_text_tower_from_the_hub_cache_loads_offline_and_keys_caches_by_tokenizer(tiny, models, tmp_path, offline):
    cache = tmp_path / "cache"
    snapshot = fill_hub_cache(cache, hf_text.tiny_multilingual_source(models))
    checkpoint = tmp_path / "tiny-ml.pt"
    torch.save(tiny.model.state_dict(), checkpoint)
    spec = f"{hub_config(tmp_path)}:{checkpoint}"
    assert weights_here(spec, cache_dir=cache)
    assert pull_clip(spec, cache_dir=cache) == checkpoint  # everything here: no download
    clip = load_clip(spec, device="cpu", cache_dir=cache)
    torch.testing.assert_close(clip.encode_texts(TEXTS), tiny.encode_texts(TEXTS))  # the checkpoint's weights
    torch.testing.assert_close(clip.encode_texts(TEXTS), reference(clip, snapshot, TEXTS), rtol=1e-4, atol=2e-6)
    # a changed tokenizer is another model for the label and query caches
    data = json.loads((snapshot / "tokenizer_config.json").read_text())
    (snapshot / "tokenizer_config.json").write_text(json.dumps({**data, "model_max_length": 64}))
    assert load_clip(spec, device="cpu", cache_dir=cache).fingerprint != clip.fingerprint


# --- the ONNX CPU backend ---------------------------------------------------------------------


def test_onnx_backend_serves_the_hf_text_tower(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    fast = load_clip("tiny-multilingual", device="cpu", cache_dir=tmp_path, backend="onnx")
    assert fast.backend == "onnx" and fast.fast.has_text, fast.backend_reason
    cosines = torch.nn.functional.cosine_similarity(fast.encode_texts(TEXTS, batch_size=3), tiny.encode_texts(TEXTS))
    assert cosines.min() >= 0.9999


def test_a_text_tower_that_does_not_export_falls_back_to_torch_and_says_why(tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")

    def cannot_trace(towers, path):  # what a tower the exporter cannot trace does
        raise RuntimeError("cannot trace this text tower")

    monkeypatch.setattr(cpu_backend, "_export_text", cannot_trace)
    clip = load_clip("tiny-multilingual", device="cpu", cache_dir=tmp_path, backend="auto")
    assert clip.backend == "torch" and "cannot trace this text tower" in clip.backend_reason
    torch.testing.assert_close(clip.encode_texts(TEXTS), tiny.encode_texts(TEXTS))
    backend, why = backend_status("tiny-multilingual", device="cpu", cache_dir=tmp_path, backend="auto")
    assert backend == "torch" and "cannot trace this text tower" in why  # what `clipbot models list` prints
