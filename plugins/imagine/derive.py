"""Laying an earlier job's final latent onto a derived job's canvas (heavy: torch).

- upscale: the latent upsampled to the new grid (VQGAN codes nearest, so every cell is still a
  codebook vector and the picture decodes as before, twice the size; the pixel grid bilinear), then
  optimised under the same prompts at the new size, where the cutouts are drawn at the new scale;
- zoom-out / pan: the earlier latent copied into the bigger grid where `lineage.placement` puts it,
  and frozen there: a gradient mask zeroes its gradients, so Adam (whose moments stay zero) never
  moves it. Only the new area (random codes from the run's seed) is drawn.

`start_from` runs before a checkpoint is loaded too: a resumed derived run gets the same mask.
"""

from __future__ import annotations

import io

import torch
import torch.nn.functional as F

from engine.errors import UserError
from plugins.imagine.lineage import GROWN, UPSCALE, placement

UPSCALE_LR = 0.5  # refining a finished picture: half the step size keeps its composition


def start_from(generation, mode: str, state: bytes) -> None:
    """Put the earlier run's final drawer parameter (from its `state_bytes`) onto `generation`'s canvas."""
    old = torch.load(io.BytesIO(state), map_location="cpu", weights_only=True)["drawer"]["z"]
    param = generation.drawer.parameters()[0]
    if old.dim() != 4 or old.shape[1] != param.shape[1]:
        raise UserError("That picture was drawn with another model; derive from a picture drawn with this one.")
    with torch.no_grad():
        if mode == UPSCALE:
            param.copy_(_upsampled(old, tuple(param.shape[2:]), generation.drawer.name).to(param))
            for group in generation.optimizer.param_groups:
                group["lr"] *= UPSCALE_LR
        elif mode in GROWN:
            top, left = _place(param, old, mode)
            mask = torch.ones_like(param)
            mask[:, :, top:top + old.shape[2], left:left + old.shape[3]] = 0
            param.register_hook(lambda grad: grad * mask)
            generation.drawer.kept = (top, left, old.shape[2], old.shape[3])  # rows/cols frozen, for tests
        else:
            raise UserError(f"Unknown derived mode {mode!r}.")
    generation.drawer.clamp_()


def _upsampled(old: torch.Tensor, size: tuple[int, int], drawer: str) -> torch.Tensor:
    if drawer == "vqgan":
        return F.interpolate(old, size=size, mode="nearest")
    return F.interpolate(old, size=size, mode="bilinear", align_corners=False)


def _place(param: torch.Tensor, old: torch.Tensor, mode: str) -> tuple[int, int]:
    rows, cols = old.shape[2:]
    if rows > param.shape[2] or cols > param.shape[3]:
        raise UserError("The new canvas is smaller than the picture it starts from.")
    top, left = placement(mode, (rows, cols), (param.shape[2], param.shape[3]))
    param[:, :, top:top + rows, left:left + cols] = old.to(param)
    return top, left
