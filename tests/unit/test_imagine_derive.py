"""Derived /imagine runs on the tiny presets: upscale x2, zoom out and pan (plugins.imagine.derive)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from engine.errors import UserError
from plugins.imagine import derive
from plugins.imagine import pipeline as P
from plugins.imagine.lineage import DERIVED, GROWN, derived_size, extended, placement
from plugins.imagine.prompts import parse_prompts


def _build(clip, vqgan, drawer, width, height, seed=3):
    return P.build_generation(clip, vqgan, prompts=parse_prompts("a red fox"), drawer=drawer, width=width,
                              height=height, seed=seed, cutouts=4)


def _finished(clip, vqgan, drawer, size=32, steps=4):
    run = _build(clip, vqgan, drawer, size, size)
    for _ in range(steps):
        run.step()
    return run


def test_derived_sizes_grow_by_whole_grid_cells_and_upscale_doubles():
    assert derived_size("upscale", 64, 48) == (128, 96)
    assert derived_size("zoom-out", 64, 64) == (96, 96)
    assert derived_size("zoom-out-2", 64, 48) == (128, 96)
    assert derived_size("pan-left", 64, 64) == derived_size("pan-right", 64, 64) == (96, 64)
    assert derived_size("pan-up", 64, 64) == derived_size("pan-down", 64, 64) == (64, 96)
    for mode in GROWN:
        for side in (16, 32, 48, 192, 200):
            new_w, new_h = derived_size(mode, side, side)
            assert (new_w - side) % 16 == 0 and (new_h - side) % 16 == 0
    # where the old picture sits: in the middle, or on the side the canvas did not grow towards
    assert placement("zoom-out", (8, 8), (12, 12)) == (2, 2)
    assert placement("pan-left", (8, 8), (8, 12)) == (0, 4)
    assert placement("pan-right", (8, 8), (8, 12)) == (0, 0)
    assert placement("pan-up", (8, 8), (12, 8)) == (4, 0)
    assert placement("pan-down", (8, 8), (12, 8)) == (0, 0)


@pytest.mark.parametrize("mode", ["zoom-out", "pan-left", "pan-up"])
@pytest.mark.parametrize("drawer", ["vqgan", "pixels"])
def test_zoom_and_pan_keep_the_old_latent_unchanged_and_draw_the_rest(clip, vqgan, mode, drawer):
    earlier = _finished(clip, vqgan, drawer)
    old = earlier.drawer.parameters()[0].detach().clone()
    width, height = derived_size(mode, 32, 32)
    run = _build(clip, vqgan, drawer, width, height, seed=5)
    derive.start_from(run, mode, earlier.state_bytes())
    param = run.drawer.parameters()[0]
    top, left, rows, cols = run.drawer.kept
    assert (rows, cols) == tuple(old.shape[2:])
    assert (top, left) == placement(mode, (rows, cols), tuple(param.shape[2:]))
    new_area = param.detach().clone()
    for _ in range(3):
        run.step()
    after = param.detach()
    assert torch.equal(after[:, :, top:top + rows, left:left + cols], old)  # the kept region, exactly
    outside = torch.ones_like(after, dtype=torch.bool)
    outside[:, :, top:top + rows, left:left + cols] = False
    assert not torch.equal(after[outside], new_area[outside])  # the new area was drawn
    assert run.image().shape[2:] == (height, width)


def test_a_resumed_zoom_keeps_its_frozen_region(clip, vqgan):
    earlier = _finished(clip, vqgan, "vqgan")
    state = earlier.state_bytes()
    whole = _build(clip, vqgan, "vqgan", 48, 48, seed=5)
    derive.start_from(whole, "zoom-out", state)
    for _ in range(4):
        whole.step()
    first = _build(clip, vqgan, "vqgan", 48, 48, seed=5)
    derive.start_from(first, "zoom-out", state)
    for _ in range(2):
        first.step()
    checkpoint = first.state_bytes()
    resumed = _build(clip, vqgan, "vqgan", 48, 48, seed=5)
    derive.start_from(resumed, "zoom-out", state)  # as the task does: the layout, then the checkpoint
    resumed.load_state_bytes(checkpoint)
    for _ in range(2):
        resumed.step()
    assert resumed.losses == whole.losses and torch.equal(resumed.drawer.z, whole.drawer.z)


def test_upscale_is_exactly_twice_the_size_and_starts_from_the_old_latent(clip, vqgan):
    earlier = _finished(clip, vqgan, "vqgan")
    run = _build(clip, vqgan, "vqgan", 64, 64, seed=4)
    derive.start_from(run, "upscale", earlier.state_bytes())
    # nearest: every 2x2 block of cells is the old cell, so the latent downsampled is the old latent
    torch.testing.assert_close(F.avg_pool2d(run.drawer.z.detach(), 2), earlier.drawer.z.detach())
    run.step()
    assert run.image().shape[2:] == (64, 64) == tuple(2 * s for s in earlier.image().shape[2:])


def test_upscaled_pixels_downsampled_stay_close_to_the_original(clip, vqgan):
    """The measure: mean absolute difference (0..1 per channel) between the upscaled picture
    area-averaged back to the old size and the old picture. It stays under 0.05 after 6 steps at
    the new size; a fresh picture at that size is ~0.15 away."""
    earlier = _finished(clip, vqgan, "pixels", size=64, steps=8)
    original = earlier.image()
    run = _build(clip, vqgan, "pixels", 128, 128, seed=4)
    derive.start_from(run, "upscale", earlier.state_bytes())
    for _ in range(6):
        run.step()
    assert run.image().shape[2:] == (128, 128)
    distance = (F.interpolate(run.image(), size=(64, 64), mode="area") - original).abs().mean().item()
    fresh = _build(clip, vqgan, "pixels", 128, 128, seed=9).image()
    unrelated = (F.interpolate(fresh, size=(64, 64), mode="area") - original).abs().mean().item()
    assert distance < 0.05 < unrelated


def test_a_latent_from_another_model_is_refused(clip, vqgan):
    earlier = _finished(clip, vqgan, "pixels")  # 3 channels, the VQGAN has 16
    run = _build(clip, vqgan, "vqgan", 64, 64)
    with pytest.raises(UserError, match="drawn with another model"):
        derive.start_from(run, "upscale", earlier.state_bytes())


def test_lineage_keeps_the_first_prompt_and_the_newest_ancestors():
    from plugins.imagine.plan import ImagineResult

    def result(n, lineage=()):
        return ImagineResult(prompt=f"p{n}", seed=n, steps=4, every=2, size="32x32", width=32, height=32,
                             drawer="vqgan", cutouts=4, quality="normal", model="m", clip="c", final="f", state="s",
                             job_id=f"job{n}", mode="vary" if n else "", lineage=tuple(lineage))

    chain: list = []
    for n in range(20):
        chain = extended(tuple(chain), result(n, chain))
    assert len(chain) == 12 and chain[0]["prompt"] == "p0" and chain[0]["mode"] == ""
    assert [a["job"] for a in chain[1:]] == [f"job{n}" for n in range(9, 20)]
    from plugins.imagine import MODES

    assert set(DERIVED) == {"upscale", *GROWN} and set(DERIVED) <= set(MODES)  # every derived mode is offered
