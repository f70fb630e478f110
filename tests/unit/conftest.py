"""Unit-tier fixtures: the seeded tiny CLIP and VQGAN presets, built once for the whole tier (the
registry's seeded builds are deterministic, so sharing them across files changes no result)."""

import pytest

from engine.models.clip import load_clip
from engine.models.vqgan import load_vqgan


@pytest.fixture(scope="session")
def clip():
    return load_clip("tiny-test", device="cpu")


@pytest.fixture(scope="session")
def vqgan():
    return load_vqgan("tiny-test", device="cpu")
