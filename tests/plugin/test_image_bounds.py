"""Hostile picture shapes through every path that decodes a user's picture and feeds a model
(/whatis from the chat, the whatis job, indexing, search by example, an /imagine init picture),
in a subprocess whose address space is capped a little above what ordinary pictures needed.

Before the aspect-ratio limit, a 1×16384 PNG of about a hundred bytes made CLIP's preprocess
build a 224×3.7M-pixel intermediate (+3.3 GB, 19 s here): under this ceiling those jobs died of
MemoryError, and an 8000×5000 JPEG as an /imagine init picture did too (a 458 MB float copy).
The model is a random one with a 224-pixel input, as the real models have (the tiny-test preset
looks at 64 px, where the blow-up is 12 times smaller)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PIL import Image

from tests.conftest import ROOT

HEADROOM_MB = 1024
TINY_224 = {"embed_dim": 64,
            "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
WORKER_PATHS = ("whatis job", "search by example", "imagine init")


def test_extreme_aspect_ratios_are_refused_and_big_pictures_stay_cheap(tmp_path):
    config = tmp_path / "tiny224.json"
    config.write_text(json.dumps(TINY_224))
    shapes = {"thin16k.png": (1, 16384), "thin64k.png": (1, 65535), "wide64k.png": (65535, 1)}
    for name, size in shapes.items():
        Image.new("L", size, 128).save(tmp_path / name)
        assert (tmp_path / name).stat().st_size < 300  # a tiny upload: the pixel limit lets it through
    Image.new("RGB", (8000, 5000), (20, 90, 200)).save(tmp_path / "big.jpg", quality=90)  # 40 MP: legal
    env = {**os.environ, "CLIPBOT_LOG_LEVEL": "ERROR",
           # glibc reserves 64 MB of address space per malloc arena (one per thread, up to 8 per core):
           # reservations, not memory, that would make an address-space ceiling depend on thread timing.
           "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.probes.image_bounds_probe", str(tmp_path / "data"), str(config),
         str(HEADROOM_MB), *(str(tmp_path / name) for name in [*shapes, "big.jpg"])],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    for name, (width, height) in shapes.items():
        line = (f"That image is {width}×{height} pixels, too long and thin; the longer side may be at most "
                "100 times the shorter.")
        got = results[name]
        assert got["chat whatis"] == line, got
        for path in WORKER_PATHS:
            assert got[path] == f"JobFailed: {line}", (path, got)
        assert got["index job"] == "skipped 1 of 1", got  # logged and left out, the batch goes on
    assert set(results["big.jpg"].values()) == {"ok"}, results["big.jpg"]
