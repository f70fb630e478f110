"""engine.models: spec parsing, the tiny preset, local-file loading, pulls, and the model registry.

No network: the Hub is simulated offline (HF_HUB_OFFLINE, a closed port) and url downloads are
served by a local http.server.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.errors import ModelUnavailable
from engine.models import clip, presets
from engine.models.clip import ClipSpec, PatchEmbedding, load_clip, parse_clip_spec, pull_clip, sha256_file
from engine.models.registry import ModelRegistry, resolve_device
from tests.conftest import ROOT

# engine.models exports the `registry` instance under the submodule's name, so fetch the module itself.
registry_module = importlib.import_module("engine.models.registry")
HUB_TAG = "ViT-B-32:laion2b_s34b_b79k"
HUB_REPO_DIR = "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
LABELS = ["a photo of a cat", "a photo of a dog", "a diagram", ""]


@pytest.fixture(scope="session")
def tiny():
    return load_clip("tiny-test", device="cpu")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.save(tiny.model.state_dict(), path)
    return path


def _images(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (40 + 7 * i, 64), (30 * i % 256, 90, 200)) for i in range(count)]


def _assert_same_weights(left, right):
    left_state, right_state = left.state_dict(), right.state_dict()
    assert left_state.keys() == right_state.keys()
    for name in left_state:
        assert torch.equal(left_state[name], right_state[name]), name


# --- spec parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("tiny-test", ClipSpec("tiny-test", "", "preset")),
        ("  tiny-test ", ClipSpec("tiny-test", "", "preset")),
        (HUB_TAG, ClipSpec("ViT-B-32", "laion2b_s34b_b79k", "pretrained")),
        ("RN50:openai", ClipSpec("RN50", "openai", "pretrained")),
        ("ViT-B-32:/w/clip.pt", ClipSpec("ViT-B-32", "/w/clip.pt", "file")),
        ("ViT-B-32:./rel.safetensors", ClipSpec("ViT-B-32", "./rel.safetensors", "file")),
        ("ViT-B-32:weights.bin", ClipSpec("ViT-B-32", "weights.bin", "file")),
        ("ViT-B-32:C:\\w\\clip.pth", ClipSpec("ViT-B-32", "C:\\w\\clip.pth", "file")),
        ("ViT-B-32:random", ClipSpec("ViT-B-32", "random", "random")),
        ("tiny-test:/w/tiny.pt", ClipSpec("tiny-test", "/w/tiny.pt", "file")),
    ],
)
def test_parse_spec_forms(spec, expected):
    assert parse_clip_spec(spec) == expected


def test_default_spec_is_a_pretrained_tag():
    assert parse_clip_spec(clip.DEFAULT_CLIP_SPEC).kind == "pretrained"


def test_parse_config_json_arch_even_with_colons_in_its_path(tmp_path):
    folder = tmp_path / "cfg:v2"
    folder.mkdir()
    config = folder / "my-vit.json"
    config.write_text(presets.preset_config_path("tiny-test").read_text())
    spec = parse_clip_spec(f"{config}:/w/my-vit.pt")
    assert spec == ClipSpec(str(config), "/w/my-vit.pt", "file")


@pytest.mark.parametrize(
    "spec, words",
    [
        ("ViT-B-33:openai", ["Unknown CLIP architecture", "ViT-B-32", "list_models"]),
        ("NoSuchNet", ["Unknown CLIP architecture", "list_models"]),
        ("ViT-B-32:nope", ["Unknown weights", "laion2b_s34b_b79k", "openai"]),
        ("ViT-B-32", ["names no weights", "laion2b_s34b_b79k", "/path/to/weights.pt"]),
        ("/no/such/config.json:/w/x.pt", ["does not exist"]),
        ("tiny-test:openai", ["not a weights file", "tiny-test:/path/to/weights.pt"]),
    ],
)
def test_parse_spec_errors_say_what_to_do(spec, words):
    with pytest.raises(ModelUnavailable) as caught:
        parse_clip_spec(spec)
    for word in words:
        assert word in str(caught.value)


# --- the tiny preset ---------------------------------------------------------------------------


def test_presets_are_labelled_meaningless():
    assert "tiny-test" in presets.PRESETS
    assert all("random" in text and "meaningless" in text for text in presets.PRESETS.values())


def test_presets_are_plain_data():
    """No import cycle with engine.models.clip: presets import nothing of clipbot, torch or open_clip."""
    code = ("import sys, engine.models.presets as p\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip') "
            "or m == 'engine.models.clip'), p.preset_seed('tiny-test'), p.preset_config_path('tiny-test').is_file())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["[]", "0", "True"], out.stderr
    source = Path(presets.__file__).read_text()
    assert "from engine" not in source and "import torch" not in source


def test_tiny_preset_loads_as_a_meaningless_eval_model(tiny):
    assert tiny.meaningless is True
    assert tiny.embed_dim == 64
    assert tiny.device == torch.device("cpu")
    assert not tiny.model.training
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_tiny_preset_is_deterministic_and_leaves_global_rng_alone(tiny):
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    again = load_clip("tiny-test", device="cpu")
    assert torch.equal(torch.get_rng_state(), before)
    _assert_same_weights(tiny.model, again.model)


def test_arch_random_uses_the_same_seeded_weights(tiny):
    _assert_same_weights(tiny.model, load_clip("tiny-test:random", device="cpu").model)


def test_encode_images_gives_batched_unit_vectors(tiny):
    images = _images(5)
    embeddings = tiny.encode_images(images)
    assert embeddings.shape == (5, 64) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(tiny.encode_images(images, batch_size=2), embeddings, atol=1e-6)
    assert not embeddings.requires_grad


def test_encode_texts_matches_open_clip(tiny):
    embeddings = tiny.encode_texts(LABELS)
    assert embeddings.shape == (len(LABELS), 64)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(LABELS)), atol=1e-5)
    with torch.no_grad():
        reference = tiny.model.encode_text(tiny.tokenizer(LABELS), normalize=True)
    assert torch.allclose(embeddings, reference, atol=1e-6)
    assert torch.allclose(tiny.encode_texts(LABELS, batch_size=3), embeddings, atol=1e-6)


@pytest.fixture(scope="session")
def clip224(tmp_path_factory):
    """A random CLIP with a 224-pixel input, as the real models have (tiny-test looks at 64 px)."""
    config = json.loads(presets.preset_config_path("tiny-test").read_text())
    config["vision_cfg"].update(image_size=224, patch_size=32, layers=1)
    path = tmp_path_factory.mktemp("arch") / "tiny224.json"
    path.write_text(json.dumps(config))
    return load_clip(f"{path}:random", device="cpu")


def _photo(width: int, height: int) -> Image.Image:
    """Gradients, discs and fine texture: something with detail at every scale, like a photo."""
    import numpy as np
    from PIL import ImageChops, ImageDraw, ImageFilter

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    image = Image.fromarray(base.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(width // 50, width // 8)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    grain = Image.effect_noise((width, height), 12).convert("RGB")  # grey noise around 128
    return ImageChops.add(image, grain, offset=-128).filter(ImageFilter.GaussianBlur(1))


def _open_clip_embedding(model, image: Image.Image) -> torch.Tensor:
    with torch.no_grad():  # open_clip's own preprocess on the whole picture, as its README does
        return model.model.encode_image(model.preprocess(image)[None], normalize=True)


def test_clip_knows_its_input_side(tiny, clip224):
    assert (tiny.image_size, clip224.image_size) == (64, 224)


def test_ordinary_pictures_embed_exactly_as_open_clip_preprocesses_them(clip224):
    for size in [(640, 480), (1343, 1500), (90, 4000)]:
        image = _photo(*size)
        assert torch.equal(clip224.encode_images([image]), _open_clip_embedding(clip224, image)), size


def test_big_pictures_are_reduced_first_and_embed_all_but_the_same(clip224):
    """A picture with a shorter side of 6 × 224 or more is box-reduced by a whole factor before
    open_clip's preprocess (Pillow's reducing_gap=3): the embedding moves by < 1e-5 in cosine."""
    from engine.images import reduce_for_side

    for size in [(2700, 1800), (4800, 3200)]:  # reduced by 2 and by 4
        image = _photo(*size)
        assert min(reduce_for_side(image, 224).size) < min(size)  # it was reduced
        cosine = float((clip224.encode_images([image]) * _open_clip_embedding(clip224, image)).sum())
        assert cosine > 1 - 1e-5, (size, cosine)
        full, reduced = clip224.preprocess(image), clip224.preprocess(reduce_for_side(image, 224))
        assert float((full - reduced).abs().mean()) < 0.01  # normalised units: ~0.7/255 of a pixel value


def test_encode_images_refuses_an_extreme_aspect_ratio(tiny):
    from engine.errors import ImageRejected

    with pytest.raises(ImageRejected, match=r"^That image is 1×16384 pixels, too long and thin"):
        tiny.encode_images([Image.new("RGB", (1, 16384))])


def test_encode_empty_lists(tiny):
    assert tiny.encode_texts([]).shape == (0, 64)
    assert tiny.encode_images([]).shape == (0, 64)


def test_get_clip_caches_in_the_registry():
    first = clip.get_clip("tiny-test", device="cpu")
    assert clip.get_clip(" tiny-test", device="cpu") is first
    assert "clip:tiny-test@cpu/torch" in registry_module.registry.loaded()  # the suite pins the torch backend


# --- local files -------------------------------------------------------------------------------


def test_load_checkpoint_via_config_json_path(tiny, tiny_checkpoint):
    config = presets.preset_config_path("tiny-test")
    loaded = load_clip(f"{config}:{tiny_checkpoint}", device="cpu")
    assert loaded.meaningless is False
    assert torch.equal(loaded.encode_texts(LABELS), tiny.encode_texts(LABELS))


def test_load_checkpoint_via_arch_name(tiny, tiny_checkpoint):
    loaded = load_clip(f"tiny-test:{tiny_checkpoint}", device="cpu")
    images = _images(2)
    assert torch.equal(loaded.encode_images(images), tiny.encode_images(images))


def test_load_relative_safetensors(tiny, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, tmp_path / "w.safetensors")
    monkeypatch.chdir(tmp_path)
    loaded = load_clip("tiny-test:./w.safetensors", device="cpu")
    assert torch.equal(loaded.encode_texts(LABELS), tiny.encode_texts(LABELS))


def test_missing_file_is_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="does not exist"):
        load_clip(f"tiny-test:{tmp_path}/absent.pt", device="cpu")


def test_garbage_file_is_unavailable(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelUnavailable, match="not a PyTorch or safetensors checkpoint"):
        load_clip(f"tiny-test:{path}", device="cpu")


def test_truncated_checkpoint_is_unavailable(tiny_checkpoint, tmp_path):
    path = tmp_path / "truncated.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(ModelUnavailable, match="Could not load CLIP weights") as caught:
        load_clip(f"tiny-test:{path}", device="cpu")
    assert "check that the file is complete" in str(caught.value)


def test_checkpoint_for_another_architecture_is_unavailable(tiny_checkpoint, tmp_path):
    config = json.loads(presets.preset_config_path("tiny-test").read_text())
    config["vision_cfg"]["width"] = 32
    other = tmp_path / "tiny-narrow.json"
    other.write_text(json.dumps(config))
    with pytest.raises(ModelUnavailable, match="made for this architecture"):
        load_clip(f"{other}:{tiny_checkpoint}", device="cpu")


def test_config_json_may_not_shadow_a_known_architecture(tiny_checkpoint, tmp_path):
    shadow = tmp_path / "ViT-B-32.json"
    shadow.write_text(presets.preset_config_path("tiny-test").read_text())
    with pytest.raises(ModelUnavailable, match="rename the file"):
        load_clip(f"{shadow}:{tiny_checkpoint}", device="cpu")


def test_config_json_that_is_not_a_model_config(tmp_path, tiny_checkpoint):
    config = tmp_path / "bad.json"
    config.write_text('{"embed_dim": 64}')
    with pytest.raises(ModelUnavailable, match="not an open_clip model config"):
        load_clip(f"{config}:{tiny_checkpoint}", device="cpu")


# --- pretrained tags: the cache and pulls ------------------------------------------------------


def _fake_hub_cache(cache_dir: Path, body: bytes) -> Path:
    """A file laid out as huggingface_hub caches open_clip's ViT-B-32 laion2b weights."""
    commit = "0" * 40
    repo = cache_dir / HUB_REPO_DIR
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / "open_clip_model.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    return path


def test_pretrained_not_cached_is_unavailable_quickly(tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        load_clip(HUB_TAG, device="cpu", cache_dir=tmp_path)
    assert time.monotonic() - started < 2
    message = str(caught.value)
    assert "not downloaded" in message and "clipbot models pull" in message
    assert "CLIPBOT_CLIP_MODEL=ViT-B-32:/path/to/file" in message


def test_pull_cached_hub_file_needs_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    cached = _fake_hub_cache(tmp_path, b"weights")
    assert pull_clip(HUB_TAG, cache_dir=tmp_path) == cached


@pytest.mark.parametrize(
    "env, words",
    [
        ({"HF_HUB_OFFLINE": "1"}, "offline mode"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "cannot reach 127.0.0.1:9"),
    ],
)
def test_pull_offline_is_unavailable_quickly(tmp_path, monkeypatch, env, words):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(ModelUnavailable) as caught:
        pull_clip(HUB_TAG, cache_dir=tmp_path, progress=False)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert words in message and "CLIPBOT_CLIP_MODEL=ViT-B-32:/path/to/file" in message
    assert "\n" not in message


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers like the Hugging Face Hub for one file: the .bin weights (no .safetensors twin)."""

    body = b"not real weights " * 20_000

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(send_body=False)

    def do_GET(self):
        self._answer(send_body=True)

    def _answer(self, send_body: bool):
        found = self.path.endswith("/resolve/main/open_clip_pytorch_model.bin")
        self.send_response(200 if found else 404)
        self.send_header("X-Repo-Commit", "a" * 40)
        if found:
            self.send_header("ETag", f'"{hashlib.sha256(self.body).hexdigest()}"')
            self.send_header("Content-Length", str(len(self.body)))
        else:
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
        self.end_headers()
        if found and send_body:
            self.wfile.write(self.body)


def test_pull_from_the_hub_falls_back_to_the_bin_file_and_caches_it(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        path = pull_clip(HUB_TAG, cache_dir=tmp_path, progress=False)
    finally:
        server.shutdown()
        server.server_close()
    assert path.name == "open_clip_pytorch_model.bin" and path.read_bytes() == _FakeHub.body
    assert pull_clip(HUB_TAG, cache_dir=tmp_path) == path  # server gone: served from the cache
    with pytest.raises(ModelUnavailable, match="not a PyTorch or safetensors checkpoint"):
        load_clip(HUB_TAG, device="cpu", cache_dir=tmp_path)  # found in the cache, checked, refused


def test_pull_presets_and_files(tiny_checkpoint, tmp_path):
    assert pull_clip("tiny-test") is None
    assert pull_clip("tiny-test:random") is None
    assert pull_clip(f"tiny-test:{tiny_checkpoint}") == tiny_checkpoint
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00" * 32)
    with pytest.raises(ModelUnavailable, match="not a PyTorch"):
        pull_clip(f"tiny-test:{garbage}")


def test_sha256_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(b"x" * 3_000_000)
    assert sha256_file(path) == hashlib.sha256(b"x" * 3_000_000).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (root folder, base url)."""
    root = tmp_path / "www"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    server.server_close()


def _publish(root: Path, url_sha: str, body: bytes) -> str:
    folder = root / url_sha
    folder.mkdir()
    (folder / "weights.pt").write_bytes(body)
    return f"/{url_sha}/weights.pt"


def test_url_download_verifies_and_then_uses_the_cache(file_server, tmp_path):
    root, base, server = file_server
    body = os.urandom(2_500_000)  # several chunks
    url = base + _publish(root, hashlib.sha256(body).hexdigest(), body)
    cache = tmp_path / "cache"
    path = clip._pull_url("RN50:test", url, cache, progress=True)
    assert path == cache / "weights.pt" and path.read_bytes() == body
    server.shutdown()  # a second pull must not need the network
    assert clip._pull_url("RN50:test", url, cache, progress=False) == path


def test_url_download_with_a_wrong_checksum_leaves_nothing(file_server, tmp_path):
    root, base, _ = file_server
    url = base + _publish(root, hashlib.sha256(b"the real weights").hexdigest(), b"tampered weights")
    cache = tmp_path / "cache"
    with pytest.raises(ModelUnavailable, match="SHA-256 check"):
        clip._pull_url("RN50:test", url, cache, progress=False)
    assert list(cache.iterdir()) == []


def test_url_download_from_a_closed_port_is_unavailable_quickly(tmp_path):
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="Could not download CLIP weights for RN50:test"):
        clip._pull_url("RN50:test", "http://127.0.0.1:9/x/weights.pt", tmp_path, progress=False)
    assert time.monotonic() - started < 3


# --- registry ----------------------------------------------------------------------------------


def test_registry_loads_once_across_threads():
    models, calls, start = ModelRegistry(), [], threading.Barrier(8)

    def loader():
        calls.append(1)
        time.sleep(0.05)
        return object()

    results = []

    def ask():
        start.wait()
        results.append(models.get("clip", loader))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)
    assert models.loaded() == ["clip"]


def test_registry_keys_do_not_block_each_other():
    models, b_loading = ModelRegistry(), threading.Event()

    def load_a():
        # Waits inside its own load for b's load to start: a registry-wide lock would stall here.
        return "a" if b_loading.wait(timeout=5) else "blocked"

    def load_b():
        b_loading.set()
        return "b"

    thread = threading.Thread(target=lambda: models.get("a", load_a))
    thread.start()
    time.sleep(0.05)
    assert models.get("b", load_b) == "b"
    thread.join()
    assert models.get("a", load_a) == "a"
    assert models.loaded() == ["a", "b"]


def test_registry_does_not_cache_failures_and_clears():
    models, attempts = ModelRegistry(), []

    def flaky():
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return "model"

    with pytest.raises(OSError):
        models.get("m", flaky)
    assert models.get("m", flaky) == "model"
    models.clear()
    assert models.loaded() == []


def test_registry_forbid_loading(monkeypatch):
    models = ModelRegistry()
    models.forbid_loading("this is the Celery prefork parent")
    with pytest.raises(RuntimeError, match="prefork parent"):
        models.get("clip", object)
    monkeypatch.setattr(registry_module, "_current_pid", lambda: -1)  # a forked child may load
    assert models.get("clip", lambda: "child model") == "child model"
    monkeypatch.undo()
    models.allow_loading()
    assert models.get("clip", lambda: "parent model") == "parent model"


def test_registry_reloads_after_a_fork(monkeypatch):
    models = ModelRegistry()
    parent_model = models.get("clip", lambda: "parent tensors")
    monkeypatch.setattr(registry_module, "_current_pid", lambda: -1)
    assert models.get("clip", lambda: "child tensors") == "child tensors"
    assert parent_model == "parent tensors"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_registry_in_a_real_forked_child_reloads_despite_a_forbidding_parent():
    models = ModelRegistry()
    models.get("clip", lambda: "parent tensors")
    models.forbid_loading("prefork parent")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report and leave at once, without running pytest's cleanup
        try:
            answer = models.get("clip", lambda: "child tensors")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            answer = repr(exc)
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    assert os.read(read_end, 200) == b"child tensors"
    with pytest.raises(RuntimeError, match="prefork parent"):
        models.get("clip", object)


def test_importing_the_registry_does_not_import_torch():
    code = "import sys, engine.models, engine.models.presets; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "gpu please"):
        with pytest.raises(ModelUnavailable):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_resolve_cuda_without_cuda(name):
    with pytest.raises(ModelUnavailable, match="no usable CUDA GPU"):
        resolve_device(name)


@pytest.mark.parametrize("spec", ["tiny-test", "ViT-B-32:random"])
def test_the_image_encoder_for_gradients_is_encode_image_laid_out_sequence_first(spec):
    """/imagine's encoder: the same features and input gradients as `model.encode_image`, from the
    same weights (nothing copied), without touching the shared model's batch-first layout."""
    model = load_clip(spec, device="cpu")
    model.model.requires_grad_(False)
    encoder = model.image_encoder_for_grad()
    size = model.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    crops = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    grads = []
    for encode in (model.model.encode_image, encoder):
        x = crops.clone().requires_grad_(True)
        features = encode(x)
        (features * torch.linspace(-1, 1, features.shape[-1])).sum().backward()
        grads.append((features.detach(), x.grad))
    # the same arithmetic, summed in another order: equal to float32 rounding
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-6 * float(grads[0][1].abs().max()))
    assert encoder is model.image_encoder_for_grad()  # built once
    if encoder is not model.model.encode_image:
        assert not encoder.transformer.batch_first and model.model.visual.transformer.batch_first
        assert all(not b.attn.batch_first for b in encoder.transformer.resblocks)
        assert all(b.attn.batch_first for b in model.model.visual.transformer.resblocks)
        assert isinstance(encoder.conv1, PatchEmbedding) and encoder.conv1.conv is model.model.visual.conv1
        assert isinstance(model.model.visual.conv1, torch.nn.Conv2d)  # the shared model keeps its conv
        shared = {p.data_ptr() for p in model.model.visual.parameters()}
        assert {p.data_ptr() for p in encoder.parameters()} == shared


@pytest.mark.parametrize("bias", [False, True])
def test_a_patch_embedding_is_its_convolution_as_a_matrix_multiply(bias):
    """Values and input gradients of the convolution (kernel = stride), also where the picture is
    not a whole number of patches (the convolution drops the rest)."""
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(3, 24, kernel_size=8, stride=8, bias=bias).requires_grad_(False)
    embed = PatchEmbedding(conv)
    for height, width in ((32, 32), (37, 45)):
        image = torch.rand(2, 3, height, width, generator=gen)
        weights = torch.randn(2, 24, height // 8, width // 8, generator=gen)
        outputs = []
        for layer in (conv, embed):
            x = image.clone().requires_grad_(True)
            y = layer(x)
            (y * weights).sum().backward()
            outputs.append((y.detach(), x.grad))
        torch.testing.assert_close(outputs[1][0], outputs[0][0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outputs[1][1], outputs[0][1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="stride is its kernel"):
        PatchEmbedding(torch.nn.Conv2d(3, 8, kernel_size=3, padding=1))
