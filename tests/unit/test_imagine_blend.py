"""/blend's parts on the tiny presets: image prompts weighted exactly as text prompts, the stored
embedding is the picture's, message links read as each platform writes them, and weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from engine.errors import UserError
from plugins.imagine import pipeline as P
from plugins.imagine.blend import parse_link, picture_links
from plugins.imagine.blend_tasks import vector_bytes, vector_of
from plugins.imagine.prompts import parse_prompts, parse_weights


def _first_loss(clip, vqgan, pictures, prompt="", drawer="vqgan"):
    """The loss before any step, same seed: the same picture and the same cutouts."""
    targets = [P.embedding_target(clip, vector, weight) for vector, weight in pictures]
    run = P.build_generation(clip, vqgan, prompts=parse_prompts(prompt) if prompt else [], drawer=drawer,
                             width=48, height=48, seed=13, cutouts=6, augment=False, image_targets=targets)
    return run, run.loss()[0]


def test_an_image_prompt_with_weight_w_is_w_times_the_unit_weight_loss(clip, vqgan):
    red, blue = (clip.encode_images([Image.new("RGB", (64, 64), c)])[0].numpy()
                 for c in ((220, 20, 20), (20, 20, 220)))
    _, unit = _first_loss(clip, vqgan, [(red, 1.0)])
    assert float(unit.detach()) > 0
    for w in (2.5, 0.3, -0.75):
        _, weighted = _first_loss(clip, vqgan, [(red, w)])
        assert float(weighted.detach()) == pytest.approx(w * float(unit.detach()), rel=1e-5)
    _, other = _first_loss(clip, vqgan, [(blue, 1.0)])
    _, both = _first_loss(clip, vqgan, [(red, 2.0), (blue, -0.5)])
    assert float(both.detach()) == pytest.approx(2.0 * float(unit.detach()) - 0.5 * float(other.detach()), rel=1e-5)
    # the gradient scales the same way: a weight is a weight, as for text
    run1, loss1 = _first_loss(clip, vqgan, [(red, 1.0)], drawer="pixels")
    loss1.backward()
    run3, loss3 = _first_loss(clip, vqgan, [(red, 3.0)], drawer="pixels")
    loss3.backward()
    torch.testing.assert_close(run3.drawer.logits.grad, 3 * run1.drawer.logits.grad, rtol=1e-4, atol=1e-7)


def test_a_stored_embedding_target_is_the_pictures_own_image_target(clip, vqgan):
    picture = Image.new("RGB", (64, 64), (30, 160, 90))
    vector = vector_of(vector_bytes(clip.encode_images([picture])[0].numpy()))
    _, stored = _first_loss(clip, vqgan, [(vector, 1.0)], prompt="a fox")
    direct = P.build_generation(clip, vqgan, prompts=parse_prompts("a fox"), drawer="vqgan", width=48, height=48,
                                seed=13, cutouts=6, augment=False, image_prompts=[picture])
    assert float(stored.detach()) == pytest.approx(float(direct.loss()[0].detach()), rel=1e-6)


def test_message_links_as_each_platform_writes_them():
    discord = parse_link("https://discord.com/channels/111/222/333", "here")
    assert (discord.space, discord.channel, discord.message) == ("111", "222", "333")
    slack = parse_link("<https://acme.slack.com/archives/C0123ABC/p1700000000123456?thread_ts=1.2&cid=C0123ABC>",
                       "here")
    assert (slack.channel, slack.message) == ("C0123ABC", "1700000000.123456")
    assert [(link.channel, link.message) for link in picture_links("local://general/4, random/7 12", "here")] == [
        ("general", "4"), ("random", "7"), ("here", "12")]
    for bad in ("https://example.com/x/y", "ftp://a/b", "a/b/c"):
        with pytest.raises(UserError, match="is not a message link"):
            parse_link(bad, "here")


def test_weights_one_non_zero_number_per_picture():
    assert parse_weights("", 3) == [1.0, 1.0, 1.0]
    assert parse_weights("1, 0.5 | -0.3", 3) == [1.0, 0.5, -0.3]
    for bad, words in (("1 2", "one weight per picture"), ("1 x 2", "must be numbers"), ("1 0 2", "non-zero")):
        with pytest.raises(UserError, match=words):
            parse_weights(bad, 3)
    # text of a blend may only push away: its pictures pull
    assert parse_prompts("blurry:-1", need_positive=False)[0].weight == -1
    with pytest.raises(UserError, match="positive weight"):
        parse_prompts("blurry:-1")
