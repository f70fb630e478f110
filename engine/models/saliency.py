"""Where in a picture CLIP sees a label: one heat map per label, from the model's own features.

- **ViT towers** (MaskCLIP, Zhou et al. 2022): the last block's attention is replaced by each
  patch attending only to itself, which leaves the value path: ln_1 → value projection →
  out_proj (→ layer scale), then the tower's ln_post and proj, as for the pooled token. Each
  patch thus gets a feature in the joint embedding space, compared with the label's text
  embedding. The map shows, per patch, the label's softmax share among the labels asked about
  (logit_scale · cosine), so a patch lights up where this label beats the others.
- **ResNet towers** (Grad-CAM, Selvaraju et al. 2017): the gradient of the cosine between the
  pooled image embedding and the label's embedding with respect to the last stage's feature map,
  averaged over space, weighs that map's channels; ReLU, scaled to 0..1 by its maximum.

Pure functions of a loaded `ClipModel` (engine.models.clip); no open_clip import: the towers
are recognised by their parts. Maps come back as [L, H, W] CPU float tensors on the model's
input grid (the centre square the preprocess crops); `overlay` draws one over that square.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from engine.errors import UserError
from engine.images import reduce_for_side

if TYPE_CHECKING:
    from engine.models.clip import ClipModel

Method = Literal["maskclip", "gradcam"]
__all__ = ["Saliency", "centre_square", "explain", "method_for", "overlay"]


@dataclass(frozen=True)
class Saliency:
    """Heat maps [L, H, W] in 0..1 for `labels`, how they were made, and (ViT) the raw per-patch
    cosines [L, H, W] they come from."""

    method: Method
    maps: torch.Tensor
    cosines: torch.Tensor | None = None


def method_for(visual: Any) -> Method | None:
    """Which explanation a vision tower supports: a plain ViT (class token, no attentional
    pooler) → MaskCLIP; open_clip's ModifiedResNet → Grad-CAM; anything else → None."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if (blocks is not None and hasattr(visual, "conv1") and getattr(visual, "attn_pool", None) is None
            and getattr(visual, "proj", None) is not None and getattr(visual, "pool_type", "tok") == "tok"
            and all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) for b in blocks)):
        return "maskclip"
    if all(hasattr(visual, part) for part in ("stem", "layer4", "attnpool")):
        return "gradcam"
    return None


def explain(clip: "ClipModel", image: Image.Image, text_matrix: torch.Tensor) -> Saliency:
    """Heat maps for the columns of `text_matrix` ([D, L], normalised label embeddings) on one
    RGB picture. UserError for a tower that has no supported explanation."""
    method = method_for(clip.model.visual)
    if method is None:
        raise UserError(f"{clip.spec}'s image tower can't show where it looks (only ViT and ResNet towers can).")
    pixels = clip.preprocess(reduce_for_side(image, clip.image_size))[None].to(clip.device)
    text = text_matrix.to(clip.device).float()
    if method == "maskclip":
        cosines = patch_features(clip.model.visual, pixels)[0].float() @ text  # [h, w, L]
        shares = (clip.logit_scale * cosines).softmax(dim=-1)
        return Saliency("maskclip", shares.permute(2, 0, 1).cpu(), cosines.permute(2, 0, 1).cpu())
    return Saliency("gradcam", grad_cam(clip.model.visual, pixels, text)[0].cpu())


@torch.no_grad()
def patch_features(visual: Any, pixels: torch.Tensor) -> torch.Tensor:
    """MaskCLIP patch features [N, h, w, D], normalised: the last block's value path per patch,
    through ln_post and proj (see the module docstring)."""
    x = _embeds(visual, pixels)
    transformer = visual.transformer
    blocks = list(transformer.resblocks)
    seq_first = not getattr(transformer, "batch_first", True)
    if seq_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if seq_first:
        x = x.transpose(0, 1)
    last = blocks[-1]
    width = x.shape[-1]
    attn = last.attn
    h = last.ln_1(x[:, 1:])  # the patches; the class token is not a place in the picture
    value = F.linear(h, attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:]
                     if attn.in_proj_bias is not None else None)
    value = last.ls_1(attn.out_proj(value))
    feats = visual.ln_post(value) @ visual.proj
    grid = _grid(visual, pixels)
    return F.normalize(feats, dim=-1).reshape(x.shape[0], *grid, -1)


def _embeds(visual: Any, pixels: torch.Tensor) -> torch.Tensor:
    """open_clip's token embedding (patches + class token + positions, ln_pre), batch-first."""
    if hasattr(visual, "_embeds"):
        return visual._embeds(pixels)
    x = visual.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    return visual.ln_pre(visual.patch_dropout(x))


def _grid(visual: Any, pixels: torch.Tensor) -> tuple[int, int]:
    patch = visual.conv1.kernel_size
    return pixels.shape[-2] // patch[0], pixels.shape[-1] // patch[1]


def grad_cam(visual: Any, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps [N, L, h, w] in 0..1 on a ResNet tower's last stage, one per text column."""
    with torch.enable_grad():
        with torch.no_grad():
            stage = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels.to(_dtype(visual)))))))
        stage = stage.detach().float().requires_grad_(True)
        pooled = F.normalize(visual.attnpool(stage.to(_dtype(visual))).float(), dim=-1)
        scores = pooled @ text  # [N, L]
        maps = []
        for label in range(text.shape[1]):
            (grad,) = torch.autograd.grad(scores[:, label].sum(), stage, retain_graph=True)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * stage).sum(dim=1)).detach())
    cams = torch.stack(maps, dim=1)  # [N, L, h, w]
    peak = cams.flatten(2).amax(dim=-1).clamp_min(1e-12)[..., None, None]
    return cams / peak


def _dtype(visual: Any) -> torch.dtype:
    return next(visual.parameters()).dtype


def centre_square(image: Image.Image) -> Image.Image:
    """The part of `image` the preprocess keeps: its centred square (shortest side, centre crop)."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def overlay(image: Image.Image, heat: torch.Tensor, *, side: int = 384, alpha: float = 0.55) -> Image.Image:
    """The picture's centre square at `side` pixels with `heat` ([h, w], 0..1) over it as a
    warm colour map (transparent where cold)."""
    base = centre_square(image.convert("RGB")).resize((side, side), Image.Resampling.BICUBIC)
    up = F.interpolate(heat[None, None].float(), size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    up = up.clamp(0, 1)
    colour = torch.stack([torch.ones_like(up), up.sqrt() * 0.9, up * 0.2], dim=-1)  # red → yellow
    tint = Image.fromarray((colour * 255).to(torch.uint8).numpy(), "RGB")
    mask = Image.fromarray((up * alpha * 255).to(torch.uint8).numpy(), "L")
    return Image.composite(tint, base, mask)
