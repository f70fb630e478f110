"""Nearest-neighbour x2 upsampling followed by a 3x3 convolution, computed without the upsampling.

Each output pixel (2a+i, 2b+j) of `conv3x3(nearest_x2(x))` reads the upsampled map at rows
2a+i-1 .. 2a+i+1, which are input rows a-1+i and a+i only (two of the three taps land on the same
input row). So each output phase (i, j) is a 2x2 convolution of the input whose kernel sums the
3x3 taps that share an input pixel: per dimension, phase 0 takes [w0, w1+w2] and phase 1
[w0+w1, w2]. Interleaving the four phases is exactly a stride-2 transposed convolution with the
4-tap kernel [w2, w1+w2, w0+w1, w0] and padding 1 (input row a reaches output rows 2a-1 .. 2a+2),
so one `conv_transpose2d` computes all four: 16 multiply-adds per input pixel and channel pair
instead of 36 (2.25x fewer FLOPs), the same function up to float rounding (sums in another order).

Pure torch (no taming import): `engine.models.vqgan` swaps taming's `Upsample` for this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Per spatial dimension, which of the 3x3 kernel's taps each of the 4 transposed-conv taps sums:
# tap k of the transposed conv writes output row 2a+k-1 from input row a.
_FOLD = torch.tensor([[0.0, 0.0, 1.0],   # row 2a-1 (phase 1 of a-1): w2
                      [0.0, 1.0, 1.0],   # row 2a   (phase 0 of a):   w1 + w2
                      [1.0, 1.0, 0.0],   # row 2a+1 (phase 1 of a):   w0 + w1
                      [1.0, 0.0, 0.0]])  # row 2a+2 (phase 0 of a+1): w0
_FOLDS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _fold(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """_FOLD on `device`, copied there once (a host-to-GPU copy per forward would stall the stream)."""
    key = (device, dtype)
    if key not in _FOLDS:
        _FOLDS[key] = _FOLD.to(device, dtype)
    return _FOLDS[key]


def folded_kernel(weight: torch.Tensor) -> torch.Tensor:
    """The [C_in, C_out, 4, 4] transposed-conv kernel equal to nearest x2 + conv with the
    [C_out, C_in, 3, 3] `weight` (padding 1). Linear in `weight`, so gradients reach it too."""
    fold = _fold(weight.device, weight.dtype)
    return torch.einsum("rk,sl,ockl->cors", fold, fold, weight)


def upsample_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)`, computed
    as one stride-2 transposed convolution of `x` (the four 2x2 phase convolutions at once)."""
    return F.conv_transpose2d(x, folded_kernel(weight).to(memory_format=_layout(x)), bias, stride=2, padding=1)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The kernel follows the input's memory layout, so a channels_last decoder stays channels_last."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class PhaseUpsample(torch.nn.Module):
    """A drop-in for taming's `Upsample(with_conv=True)`: the same `conv` submodule (so state-dict
    keys and weights are the original's, and stay in step with it), a cheaper forward."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) \
                or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("PhaseUpsample needs a plain 3x3 convolution with stride 1 and padding 1")
        self.with_conv = True
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample_conv(x, self.conv.weight, self.conv.bias)
