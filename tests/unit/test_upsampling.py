"""PhaseUpsample (engine/models/upsampling.py) is taming's Upsample(with_conv=True), value for value
and gradient for gradient, on the tiny VQModel, on real-size channels, and through a whole /imagine run."""

from __future__ import annotations

import copy

import pytest
import taming.modules.diffusionmodules.model as taming_model
import torch

from engine.models.clip import load_clip
from engine.models.upsampling import PhaseUpsample, upsample_conv
from engine.models.vqgan import load_vqgan, use_phase_upsampling
from plugins.imagine import pipeline as P
from plugins.imagine.prompts import parse_prompts


def _out_and_grads(module: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """(output, d loss/d input, d loss/d conv weights) for a fixed random linear loss of the output."""
    x = x.detach().clone().requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    out = module(x)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * probe).sum(), [x, *params])
    return (out.detach(), *grads)


def _assert_same(ours: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...], rtol: float = 1e-5) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        # Sums in another order: the error scales with the magnitude, not with each element.
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


def test_upsample_conv_is_nearest_upsample_then_conv_in_float64():
    gen = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(5, 4, 3, 3, generator=gen, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    x = torch.randn(2, 4, 6, 9, generator=gen, dtype=torch.float64)  # not square, odd width: edges both ways
    upsampled = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    ref = torch.nn.functional.conv2d(upsampled, weight, bias, padding=1)
    torch.testing.assert_close(upsample_conv(x, weight, bias), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels, side", [(512, (16, 16)), (128, (24, 40))])
def test_real_size_upsample_block_same_outputs_and_gradients(channels, side):
    """The f16 decoder's widest upsample (512 channels at 16x16) and its 128-channel one."""
    torch.manual_seed(0)
    original = taming_model.Upsample(channels, with_conv=True)
    phase = PhaseUpsample(original.conv)
    x = torch.randn(1, channels, *side)
    _assert_same(_out_and_grads(phase, x), _out_and_grads(original, x))


def test_tiny_vqgan_decoder_same_image_and_latent_gradient():
    vqgan = load_vqgan("tiny-test", device="cpu")
    decoder = vqgan.model.decoder
    assert sum(isinstance(m, PhaseUpsample) for m in decoder.modules()) == 2  # the loader swapped both
    keys = list(vqgan.model.state_dict())
    reference = copy.deepcopy(decoder)
    assert use_phase_upsampling(reference, enabled=False) == 2
    assert not any(isinstance(m, PhaseUpsample) for m in reference.modules())
    assert list(vqgan.model.state_dict()) == keys  # checkpoints load as before
    z = torch.randn(1, 32, 8, 12, generator=torch.Generator().manual_seed(2))
    _assert_same(_out_and_grads(decoder, z), _out_and_grads(reference, z))


def test_phase_upsample_refuses_a_conv_it_does_not_compute():
    with pytest.raises(ValueError, match="3x3"):
        PhaseUpsample(torch.nn.Conv2d(4, 4, 3, stride=2, padding=1))


def _run(clip, vqgan, steps: int = 4, **options) -> P.Generation:
    run = P.build_generation(clip, vqgan, prompts=parse_prompts("a red fox | blurry:-0.5"), drawer="vqgan",
                             width=64, height=64, seed=7, cutouts=8, lr=0.5, **options)  # augmentations on: seeded
    for _ in range(steps):
        run.step()
    return run


def test_whole_run_same_seed_same_image_as_taming_upsampling():
    """Today's defaults (phase upsampling; channels_last on a CPU) against the decoder as before."""
    clip = load_clip("tiny-test", device="cpu")
    ours = load_vqgan("tiny-test", device="cpu")
    taming_way = copy.copy(ours)
    taming_way.model = copy.deepcopy(ours.model)
    assert use_phase_upsampling(taming_way.model, enabled=False) == 2
    fast, ref = _run(clip, ours), _run(clip, taming_way, channels_last=False)
    assert fast.drawer.layout is torch.channels_last
    assert fast.losses == pytest.approx(ref.losses, rel=1e-5)
    assert len(set(ref.losses)) == len(ref.losses)  # the picture changed every step: the check means something
    torch.testing.assert_close(fast.image(), ref.image(), rtol=1e-4, atol=1e-5)
