"""Where? heat maps against brute-force references built from open_clip's own modules, on seeded
random models: MaskCLIP patch by patch for a ViT tower, Grad-CAM by finite differences for a ResNet."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from engine.models import saliency
from engine.models.clip import load_clip
from engine.errors import UserError

RN_CONFIG = Path(__file__).parents[1] / "support" / "models" / "tiny-test-rn.json"
LABELS = ["a red square", "a cat", "a whiteboard", "the sea"]


@pytest.fixture(scope="module")
def vit():
    return load_clip("tiny-test", device="cpu")


@pytest.fixture(scope="module")
def resnet():
    return load_clip(f"{RN_CONFIG}:random", device="cpu")


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (120, 90))
    image.putdata([((x * 7) % 256, (y * 11) % 256, (x * y) % 256) for y in range(90) for x in range(120)])
    return image


def text_matrix(clip, labels=LABELS):
    return torch.nn.functional.normalize(clip.encode_texts(labels), dim=-1).T


@torch.no_grad()
def maskclip_reference(clip, image, matrix):
    """Per patch: embed the patch's own pixels with conv1, run the earlier blocks over all tokens,
    then the last block's nn.MultiheadAttention with that patch as its only query, key and value
    (attention to itself alone = the value path), its layer scale, ln_post and proj."""
    visual = clip.model.visual
    pixels = clip.preprocess(image)[None]
    p = visual.conv1.kernel_size[0]
    grid = pixels.shape[-1] // p
    tokens = [visual.class_embedding]
    for row in range(grid):
        for col in range(grid):
            crop = pixels[:, :, row * p:(row + 1) * p, col * p:(col + 1) * p]
            tokens.append(visual.conv1(crop).flatten())
    x = visual.ln_pre(torch.stack(tokens)[None] + visual.positional_embedding)
    for block in visual.transformer.resblocks[:-1]:
        x = block(x)
    last = visual.transformer.resblocks[-1]
    cosines = torch.empty(matrix.shape[1], grid, grid)
    for i in range(grid * grid):
        h = last.ln_1(x[:, 1 + i:2 + i])
        attended = last.ls_1(last.attn(h, h, h, need_weights=False)[0])
        feature = visual.ln_post(attended[0, 0]) @ visual.proj
        cosines[:, i // grid, i % grid] = (feature / feature.norm()) @ matrix
    return cosines


def test_maskclip_equals_the_patch_by_patch_reference(vit, picture):
    matrix = text_matrix(vit)
    result = saliency.explain(vit, picture, matrix)
    expected = maskclip_reference(vit, picture, matrix)
    assert result.method == "maskclip" and result.maps.shape == (len(LABELS), 4, 4)
    torch.testing.assert_close(result.cosines, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.maps, (vit.logit_scale * expected).softmax(dim=0), rtol=1e-4, atol=1e-5)
    # not vacuous: the patches differ, and the labels share each patch out
    assert expected.std() > 1e-3 and (result.maps.amax(dim=(1, 2)) - result.maps.amin(dim=(1, 2))).min() > 1e-4
    torch.testing.assert_close(result.maps.sum(dim=0), torch.ones(4, 4))


@torch.no_grad()
def gradcam_reference(clip, image, matrix, eps=1e-3):
    """Grad-CAM with the gradient by central finite differences (float64) through open_clip's
    attention pool, one stage activation at a time."""
    visual = clip.model.visual.double()
    try:
        pixels = clip.preprocess(image)[None].double()
        stage = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))[0]
        n = stage.numel()
        bumps = torch.eye(n, dtype=torch.float64).reshape(n, *stage.shape) * eps
        def score(batch):
            return torch.nn.functional.normalize(visual.attnpool(batch), dim=-1) @ matrix.double()
        grads = (score(stage + bumps) - score(stage - bumps)) / (2 * eps)  # [n, L]
        maps = []
        for label in range(matrix.shape[1]):
            grad = grads[:, label].reshape(stage.shape)
            cam = torch.relu((grad.mean(dim=(1, 2), keepdim=True) * stage).sum(dim=0))
            maps.append(cam / cam.max().clamp_min(1e-12))
        return torch.stack(maps).float()
    finally:
        visual.float()


def test_gradcam_equals_the_finite_difference_reference(resnet, picture):
    matrix = text_matrix(resnet)
    result = saliency.explain(resnet, picture, matrix)
    expected = gradcam_reference(resnet, picture, matrix)
    assert result.method == "gradcam" and result.maps.shape == expected.shape == (len(LABELS), 2, 2)
    torch.testing.assert_close(result.maps, expected, rtol=1e-3, atol=1e-4)
    peaks = expected.amax(dim=(1, 2))
    assert ((peaks == 1) | (peaks == 0)).all()  # scaled by the peak; all zero where ReLU leaves nothing
    assert (peaks == 1).sum() >= 2 and expected[peaks == 1].std() > 1e-3  # real maps, not flat


def test_unsupported_tower_is_a_clear_error(vit, picture):
    class Opaque(torch.nn.Module):
        pass

    fake = type(vit)(spec="odd-model", model=type("M", (), {"visual": Opaque()})(), preprocess=vit.preprocess,
                     tokenizer=vit.tokenizer, device=vit.device, meaningless=True, embed_dim=64, logit_scale=1.0)
    with pytest.raises(UserError, match="can't show where it looks"):
        saliency.explain(fake, picture, text_matrix(vit))


def test_overlay_covers_the_centre_square(picture):
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0  # the top-left patch is hot
    out = saliency.overlay(picture, heat, side=64)
    assert out.size == (64, 64)
    plain = saliency.centre_square(picture).resize((64, 64), Image.Resampling.BICUBIC)
    hot, cold = out.getpixel((2, 2)), out.getpixel((60, 60))
    assert hot != plain.getpixel((2, 2)) and hot[0] > plain.getpixel((2, 2))[0] - 1
    assert cold == plain.getpixel((60, 60))  # transparent where the map is cold
