"""VQGAN specs, loading (presets, random architectures, local files) and pulling from a local server."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from functools import partial

import pytest
import torch
import yaml

from engine.errors import ModelUnavailable
from engine.models import vqgan
from engine.models.vqgan import (
    CONFIG_DIR, OFFICIAL, VqganSpec, load_vqgan, parse_vqgan_spec, pull_vqgan, vqgan_available,
)
from tests.conftest import ROOT, clipbot_env


def test_parse_specs(tmp_path):
    assert parse_vqgan_spec("tiny-test") == VqganSpec("preset", "tiny-test")
    assert parse_vqgan_spec(" imagenet_f16_16384 ") == VqganSpec("official", "imagenet_f16_16384")
    assert parse_vqgan_spec("openimages_f8_8192:random") == VqganSpec("random", "openimages_f8_8192")
    assert parse_vqgan_spec("/a/b c.yaml:/d/e.ckpt") == VqganSpec("file", "/a/b c.yaml", "/d/e.ckpt")
    for bad in ("imagenet", "vqgan_f16:random", "x.json:y.ckpt", ""):
        with pytest.raises(ModelUnavailable, match="Unknown VQGAN model"):
            parse_vqgan_spec(bad)


def test_tiny_preset_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = load_vqgan("tiny-test", device="cpu")
    b = load_vqgan("tiny-test", device="cpu")
    assert torch.equal(torch.rand(3), before)
    assert a.meaningless and not a.gumbel and a.factor == 4 and tuple(a.codebook.shape) == (64, 16)
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert not any(p.requires_grad for p in a.model.parameters())
    z = a.encode(torch.zeros(1, 3, 64, 64))
    assert tuple(z.shape) == (1, 16, 16, 16) and tuple(a.decode(z).shape) == (1, 3, 64, 64)


def test_gumbel_architecture_uses_its_embed_codebook():
    model = load_vqgan("openimages_f8_8192:random", device="cpu")
    assert model.gumbel and model.factor == 8 and tuple(model.codebook.shape) == (8192, 256)
    assert model.codebook is model.model.quantize.embed.weight


def _tiny_files(tmp_path, extra_keys=True):
    model = load_vqgan("tiny-test", device="cpu")
    state = {k: v + 0.5 for k, v in model.model.state_dict().items()}  # differs from the preset
    if extra_keys:
        state["loss.discriminator.w"] = torch.zeros(1)  # training-only weights are ignored
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": state, "global_step": 7}, checkpoint)
    config = tmp_path / "tiny.yaml"
    config.write_text((CONFIG_DIR / "vqgan-tiny-test.yaml").read_text())
    return config, checkpoint, state


def test_local_files_load_their_weights(tmp_path):
    config, checkpoint, state = _tiny_files(tmp_path)
    model = load_vqgan(f"{config}:{checkpoint}", device="cpu")
    assert not model.meaningless
    assert torch.equal(model.codebook, state["quantize.embedding.weight"])
    assert vqgan_available(f"{config}:{checkpoint}")


def test_bad_local_files_are_one_clear_line(tmp_path):
    config, checkpoint, _ = _tiny_files(tmp_path)
    cases = [
        (f"{tmp_path}/none.yaml:{checkpoint}", "config file .* does not exist"),
        (f"{config}:{tmp_path}/none.ckpt", "checkpoint file .* does not exist"),
    ]
    torn = tmp_path / "torn.ckpt"
    torn.write_bytes(checkpoint.read_bytes()[:1000])
    cases.append((f"{config}:{torn}", "Could not load the VQGAN checkpoint"))
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"model": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {}}}))
    cases.append((f"{other}:{checkpoint}", "not a taming VQGAN config"))
    wrong = tmp_path / "wrong.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["params"]["ddconfig"]["ch"] = 64
    wrong.write_text(yaml.safe_dump(cfg))
    cases.append((f"{wrong}:{checkpoint}", "Could not load the VQGAN checkpoint"))
    for spec, message in cases:
        with pytest.raises(ModelUnavailable, match=message) as caught:
            load_vqgan(spec, device="cpu")
        assert "\n" not in str(caught.value)


def test_official_model_offline_without_files_says_what_to_do(tmp_path):
    assert not vqgan_available("imagenet_f16_16384", tmp_path)
    with pytest.raises(ModelUnavailable) as caught:
        load_vqgan("imagenet_f16_16384", device="cpu", cache_dir=tmp_path)
    assert str(caught.value) == (
        "The VQGAN imagenet_f16_16384 is not downloaded; run `clipbot models pull --vqgan imagenet_f16_16384` "
        "on a machine with internet access, or set CLIPBOT_VQGAN_MODEL=CONFIG.yaml:CHECKPOINT."
    )


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def heibox(tmp_path, monkeypatch):
    """A local stand-in for the authors' file share serving the tiny config and checkpoint."""
    root = tmp_path / "www"
    root.mkdir()
    config, checkpoint, state = _tiny_files(tmp_path)
    (root / "model.yaml").write_bytes(config.read_bytes())
    (root / "last.ckpt").write_bytes(checkpoint.read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"

    class _Local(vqgan._Official):
        config_url = f"{base}/model.yaml"
        checkpoint_url = f"{base}/last.ckpt"

    monkeypatch.setitem(OFFICIAL, "imagenet_f16_1024", _Local("local", "tiny stand-in"))
    yield root, state, server
    server.shutdown()
    server.server_close()


def test_pull_downloads_records_the_hash_and_then_loads_offline(heibox, tmp_path):
    root, state, server = heibox
    cache = tmp_path / "cache"
    config, checkpoint = pull_vqgan("imagenet_f16_1024", cache_dir=cache, progress=False)
    assert checkpoint.read_bytes() == (root / "last.ckpt").read_bytes()
    recorded = checkpoint.with_name("imagenet_f16_1024.ckpt.sha256").read_text().strip()
    assert recorded == vqgan.downloads.sha256_file(checkpoint)
    server.shutdown()  # from now on, offline
    assert pull_vqgan("imagenet_f16_1024", cache_dir=cache, progress=False) == (config, checkpoint)
    model = load_vqgan("imagenet_f16_1024", device="cpu", cache_dir=cache)
    assert torch.equal(model.codebook, state["quantize.embedding.weight"]) and not model.meaningless


def test_pull_refetches_a_corrupted_file_and_verifies_it(heibox, tmp_path):
    root, _, _ = heibox
    cache = tmp_path / "cache"
    _, checkpoint = pull_vqgan("imagenet_f16_1024", cache_dir=cache, progress=False)
    checkpoint.write_bytes(b"corrupted")
    pull_vqgan("imagenet_f16_1024", cache_dir=cache, progress=False)
    assert checkpoint.read_bytes() == (root / "last.ckpt").read_bytes()
    (root / "last.ckpt").write_bytes(b"tampered upstream")
    checkpoint.unlink()
    with pytest.raises(ModelUnavailable, match="failed its SHA-256 check"):
        pull_vqgan("imagenet_f16_1024", cache_dir=cache, progress=False)
    assert not checkpoint.exists()


def test_pull_offline_is_quick_and_one_line(tmp_path, monkeypatch):
    class _Dead(vqgan._Official):
        config_url = "http://127.0.0.1:9/model.yaml"
        checkpoint_url = "http://127.0.0.1:9/last.ckpt"

    monkeypatch.setitem(OFFICIAL, "imagenet_f16_16384", _Dead("dead", "unreachable"))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        pull_vqgan("imagenet_f16_16384", cache_dir=tmp_path, progress=False)
    assert time.monotonic() - started < 3
    assert str(caught.value).startswith("Could not download the VQGAN imagenet_f16_16384: cannot reach 127.0.0.1:9")
    assert "\n" not in str(caught.value)


def test_cli_models_pull_vqgan(data_dir):
    ok = subprocess.run([sys.executable, "-m", "bot.cli", "models", "pull", "--vqgan", "tiny-test"], cwd=ROOT,
                        env=clipbot_env(data_dir, None), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "VQGAN tiny-test: ready" in ok.stdout, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "bot.cli", "models", "pull", "--vqgan", "nope"], cwd=ROOT,
                         env=clipbot_env(data_dir, None), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("clipbot: Unknown VQGAN model 'nope'")


def test_seeded_vqgan_and_clip_built_side_by_side_get_their_own_weights():
    # torch's CPU generator is process-wide: a VQGAN preset built while a CLIP preset builds in another
    # thread (a worker warming both) must not draw the other's numbers
    from engine.models.clip import load_clip

    def weights(model):
        return {name: t.clone() for name, t in model.state_dict().items()}

    serial = {"vqgan": weights(load_vqgan("tiny-test", device="cpu").model),
              "clip": weights(load_clip("tiny-test", device="cpu").model)}
    built: dict[str, list] = {"vqgan": [], "clip": []}

    def build(kind):
        model = load_vqgan("tiny-test", device="cpu").model if kind == "vqgan" \
            else load_clip("tiny-test", device="cpu").model
        built[kind].append(weights(model))

    threads = [threading.Thread(target=build, args=(kind,)) for kind in ("vqgan", "clip") * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for kind, copies in built.items():
        assert len(copies) == 3
        for state in copies:
            assert all(torch.equal(state[name], serial[kind][name]) for name in serial[kind]), kind
