"""The /imagine method on the tiny presets: equivalence with a plain reference loop, loss, seeds,
weighted prompts, checkpoints."""

from __future__ import annotations

import math
import resource
import sys

import pytest
import torch
import torch.nn.functional as F

from plugins.imagine import pipeline as P
from plugins.imagine.prompts import parse_prompts


def _build(clip, vqgan, prompt="a red fox | blurry:-0.5", drawer="vqgan", seed=3, size=64, cutouts=8, **kw):
    return P.build_generation(clip, vqgan, prompts=parse_prompts(prompt), drawer=drawer, width=size, height=size,
                              seed=seed, cutouts=cutouts, **kw)


def _reference_vector_quantize(x, codebook):
    """nerdyrodent/VQGAN-CLIP's: distances and a one-hot matmul, all under autograd."""
    d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
    x_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
    return P.replace_grad(x_q, x)


def test_vector_quantize_is_the_reference_bit_for_bit_with_straight_through_gradients():
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(1024, 16, generator=gen)
    x = torch.randn(1, 6, 7, 16, generator=gen, requires_grad=True)
    ours, ref = P.vector_quantize(x, codebook), _reference_vector_quantize(x, codebook)
    assert torch.equal(ours, ref)
    assert {tuple(r) for r in ours.reshape(-1, 16).tolist()} <= {tuple(r) for r in codebook.tolist()}
    weights = torch.randn(ours.shape, generator=gen)
    (grad,) = torch.autograd.grad((ours * weights).sum(), x)
    assert torch.equal(grad, weights)  # straight through: the quantiser's gradient is the identity


def test_taming_runs_with_a_fused_silu_equal_to_its_own_activation():
    import taming.modules.diffusionmodules.model as taming_model

    from engine.models.vqgan import TAMING_NONLINEARITY

    assert taming_model.nonlinearity is F.silu
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(F.silu(x), TAMING_NONLINEARITY(x), rtol=1e-6, atol=1e-7)


def test_loop_matches_a_plain_reference_loop(clip, vqgan):
    """Augmentations off, same seed: the loss trajectory and final latent of `Generation` equal
    those of the textbook loop written here from the same primitives."""
    # lr 0.5: the tiny codebook needs a few steps of 0.1 before a code flips; 0.5 flips some in 5 steps
    steps, seed, size, cutn, cut_pow, lr = 5, 11, 64, 8, 1.0, 0.5
    ours = _build(clip, vqgan, seed=seed, size=size, cutouts=cutn, cut_pow=cut_pow, augment=False, lr=lr)
    for _ in range(steps):
        ours.step()

    # --- the reference: nerdyrodent/VQGAN-CLIP's generate.py, reduced to its arithmetic ---
    gen = P.seed_everything(seed)
    codebook = vqgan.codebook
    f = vqgan.factor
    toks = size // f
    one_hot = F.one_hot(torch.randint(codebook.shape[0], [toks * toks], generator=gen), codebook.shape[0]).float()
    z = (one_hot @ codebook).view(1, toks, toks, -1).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    texts = clip.encode_texts(["a red fox", "blurry"])
    weights = [1.0, -0.5]
    cin = P.clip_input(clip)
    opt = torch.optim.Adam([z], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        z_q = _reference_vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        out = P.clamp_with_grad(vqgan.decode(z_q).add(1).div(2), 0, 1)
        crops = P.make_cutouts(out, cut_size=cin.size, cutn=cutn, cut_pow=cut_pow, generator=gen, augment=False)
        embeds = clip.model.encode_image((crops - cin.mean) / cin.std).float()
        loss = 0
        for i, w in enumerate(weights):
            dists = P.spherical_distance(embeds, texts[i : i + 1]) * math.copysign(1, w)
            loss = loss + abs(w) * dists.mean()
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))
        losses.append(float(loss.detach()))

    assert ours.losses == pytest.approx(losses, rel=1e-4)
    # Adam's step is ~lr * sign(grad) wherever |grad| >> eps, but for the few near-zero gradients
    # float rounding (sums in another order: phase upsampling, CLIP's patch embedding as a matmul)
    # changes its size: after 5 steps of lr 0.5 a dozen of 4096 entries differ by up to ~2e-4.
    torch.testing.assert_close(ours.drawer.z.detach(), z.detach(), rtol=1e-4, atol=5e-4)
    assert len(set(losses)) == steps  # codes changed at every step, so the comparison means something


@pytest.mark.parametrize("drawer", ["vqgan", "pixels"])
def test_loss_falls(clip, vqgan, drawer):
    run = _build(clip, vqgan, prompt="a red fox", drawer=drawer, augment=False)
    for _ in range(12):
        run.step()
    assert run.losses[-1] < run.losses[0] - 0.01


def test_same_seed_same_png_other_seed_other_png(clip, vqgan):
    def final(seed):
        run = _build(clip, vqgan, seed=seed)  # augmentations on: they are seeded too
        for _ in range(4):
            run.step()
        return run.png()

    assert final(5) == final(5)
    assert final(5) != final(6)


def test_weighted_and_negative_prompts_combine_as_defined(clip, vqgan):
    def first_loss(prompt):
        run = _build(clip, vqgan, prompt=prompt, seed=9, augment=False)
        return float(run.loss()[0].detach())  # same seed: same picture and same cutouts

    fox, blurry = first_loss("a red fox"), first_loss("blurry")
    assert first_loss("a red fox:2") == pytest.approx(2 * fox, rel=1e-5)
    assert first_loss("a red fox:1 | blurry:-0.5") == pytest.approx(fox - 0.5 * blurry, rel=1e-5)
    # a stop above every distance keeps the loss value but stops that prompt's pull (no gradient)
    stopped = _build(clip, vqgan, prompt="a red fox:1:5", drawer="pixels", seed=9, augment=False)
    stopped.loss()[0].backward()
    assert float(stopped.loss()[0].detach()) > 0 and not stopped.drawer.logits.grad.any()
    pulled = _build(clip, vqgan, prompt="a red fox:1:0", drawer="pixels", seed=9, augment=False)
    pulled.loss()[0].backward()
    assert pulled.drawer.logits.grad.abs().sum() > 0


def test_image_prompts_pull_towards_the_image(clip, vqgan):
    from PIL import Image

    red = Image.new("RGB", (64, 64), (220, 20, 20))
    run = P.build_generation(clip, vqgan, prompts=parse_prompts("a fox"), drawer="pixels", width=64, height=64,
                             seed=1, cutouts=8, augment=False, image_prompts=[red])
    assert len(run.targets) == 2
    only_text = _build(clip, vqgan, prompt="a fox", drawer="pixels", seed=1, augment=False)
    assert float(run.loss()[0].detach()) != pytest.approx(float(only_text.loss()[0].detach()))


def test_checkpoint_resume_continues_exactly(clip, vqgan):
    whole = _build(clip, vqgan, seed=4)
    for _ in range(6):
        whole.step()

    first = _build(clip, vqgan, seed=4)
    for _ in range(3):
        first.step()
    saved = first.state_bytes()
    resumed = _build(clip, vqgan, seed=99)  # fresh process, wrong seed: the checkpoint must win
    resumed.load_state_bytes(saved)
    assert resumed.step_done == 3
    for _ in range(3):
        resumed.step()
    assert resumed.losses == whole.losses
    assert torch.equal(resumed.drawer.z, whole.drawer.z) and resumed.png() == whole.png()


def test_init_image_goes_through_the_encoder(clip, vqgan):
    from PIL import Image

    init = Image.new("RGB", (80, 48), (10, 200, 30))
    run = P.build_generation(clip, vqgan, prompts=parse_prompts("x"), drawer="vqgan", width=64, height=64, seed=1,
                             cutouts=4, init=init)
    expected = vqgan.encode(F.interpolate(P.image_tensor(init), size=(64, 64), mode="bilinear",
                                          align_corners=False, antialias=True) * 2 - 1)
    torch.testing.assert_close(run.drawer.z.detach(), expected)


def test_variation_noise_moves_the_latent_within_the_codebook_box(clip, vqgan):
    run = _build(clip, vqgan, seed=2)
    before = run.drawer.z.detach().clone()
    P.add_noise(run, 0.3)
    after = run.drawer.z.detach()
    assert not torch.equal(before, after)
    assert (after >= run.drawer.z_min - 1e-6).all() and (after <= run.drawer.z_max + 1e-6).all()


def test_autocast_precisions_follow_the_fp32_run_and_a_bad_one_is_refused(clip, vqgan):
    """bf16/fp16 autocast (fp16 with a gradient scaler) run the same optimisation, a little rounded."""
    runs = {}
    for precision in ("fp32", "bf16", "fp16"):
        run = _build(clip, vqgan, augment=False, cutouts=2, precision=precision, channels_last=False)
        for _ in range(2):
            run.step()
        runs[precision] = run.losses
    for precision in ("bf16", "fp16"):
        assert runs[precision] == pytest.approx(runs["fp32"], rel=0.05)
    with pytest.raises(ValueError, match="Unknown precision 'fp8'"):
        _build(clip, vqgan, precision="fp8")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_cpu_run_keeps_freed_memory_so_the_next_step_does_not_fault_its_pages_back_in(clip, vqgan):
    """A 48 MB block (over glibc's largest mmap threshold) freed and allocated again: with freed
    memory kept, the second allocation reuses the first's pages instead of faulting fresh ones."""
    _build(clip, vqgan, size=32, cutouts=1)  # on a CPU, building a run turns it on
    if not P.keep_freed_memory():
        pytest.skip("not glibc")
    pages = 48 * 2**20 // resource.getpagesize()
    faults = []
    for _ in range(4):  # as steps do: the same big blocks allocated (every page touched) and freed
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(12 * 2**20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        assert float(block[-1]) == 1.0
        del block
    assert min(faults[1:]) < pages // 10, f"page faults per allocation {faults}, {pages} pages"
