"""VQGAN+CLIP as pure functions of loaded models (heavy: torch). No Celery, no chat.

The method is VQGAN-CLIP's as nerdyrodent/VQGAN-CLIP and pixray run it:
  z (latent codes: random, or an init image through the VQGAN encoder)
  -> straight-through vector quantisation against the codebook -> VQGAN decode -> clamp to [0, 1]
  -> `cutouts` random crops (size ~ U^cut_pow between CLIP's input and the image side), resized to
     CLIP's input, optionally augmented (flip, small affine, noise)
  -> CLIP image embeddings -> per prompt: |w| * mean(sign(w) * spherical_distance) (with `stop`)
  -> Adam on z (lr 0.1), then z clamped to the codebook's per-channel range.
The second drawer, "pixels", needs no VQGAN: a low-resolution RGB grid (logits) upsampled to the
output size and squashed by a sigmoid, optimised under the same loss.

All randomness after set-up comes from one `torch.Generator`, whose state is part of a checkpoint,
so a resumed run continues exactly where the interrupted one was.
"""

from __future__ import annotations

import ctypes
import io
import math
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from plugins.imagine.prompts import WeightedPrompt

PIXEL_SCALE = 4  # the pixels drawer optimises a grid 4x coarser than the output
# Forward-pass precisions: autocast dtypes (None: float32). Lower ones change the result a little
# (bench/gpu_check.py reports by how much); float32 is the default everywhere.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


# --- primitives (the reference loop in the tests is written from these) ---------------------------


class _ReplaceGrad(torch.autograd.Function):
    """Forward `x_forward`, backward into `x_backward` (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x_forward, x_backward):
        ctx.shape = x_backward.shape
        return x_forward

    @staticmethod
    def backward(ctx, grad_in):
        return None, grad_in.sum_to_size(ctx.shape)


class _ClampWithGrad(torch.autograd.Function):
    """Clamp, but let gradients through where they push the value back into range."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad_in):
        (x,) = ctx.saved_tensors
        return grad_in * (grad_in * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


replace_grad = _ReplaceGrad.apply
clamp_with_grad = _ClampWithGrad.apply


def vector_quantize(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest codebook vector for each [..., e_dim] row of `x`, with straight-through gradients.

    The reference builds the distances under autograd and picks rows with a one-hot matmul; no
    gradient flows through argmin, so the distances are computed without a graph and the rows
    looked up (the same values, bit for bit, without two [tokens x codes] matrices per step)."""
    with torch.no_grad():
        d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
        indices = d.argmin(-1)
    return replace_grad(codebook[indices].to(x.dtype), x)


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance / 2 between the directions of [N, D] `a` and [M, D] `b`: [N, M]."""
    a = F.normalize(a.unsqueeze(1), dim=2)
    b = F.normalize(b.unsqueeze(0), dim=2)
    return a.sub(b).norm(dim=2).div(2).arcsin().pow(2).mul(2)


def prompt_loss(image_embeds: torch.Tensor, target: torch.Tensor, weight: float, stop: float = -math.inf):
    """One prompt's loss: |w| * mean(sign(w) * distance), distances held at `stop` (nerdyrodent's Prompt)."""
    dists = spherical_distance(image_embeds, target) * math.copysign(1.0, weight)
    stop_t = torch.tensor(stop, dtype=dists.dtype, device=dists.device)
    return abs(weight) * replace_grad(dists, torch.maximum(dists, stop_t)).mean()


def make_cutouts(image: torch.Tensor, *, cut_size: int, cutn: int, cut_pow: float, generator: torch.Generator,
                 augment: bool = True, noise: float = 0.1) -> torch.Tensor:
    """`cutn` random square crops of a [1, 3, H, W] image, resized to `cut_size`, maybe augmented."""
    side_y, side_x = image.shape[2:4]
    max_size = min(side_x, side_y)
    min_size = min(side_x, side_y, cut_size)
    crops = []
    for _ in range(cutn):
        size = int(torch.rand([], generator=generator) ** cut_pow * (max_size - min_size) + min_size)
        offset_x = int(torch.randint(0, side_x - size + 1, (), generator=generator))
        offset_y = int(torch.randint(0, side_y - size + 1, (), generator=generator))
        crop = image[:, :, offset_y:offset_y + size, offset_x:offset_x + size]
        crops.append(F.interpolate(crop, size=(cut_size, cut_size), mode="bilinear", align_corners=False,
                                   antialias=size > cut_size))
    batch = torch.cat(crops, dim=0)
    return _augment(batch, generator, noise) if augment else batch


def _augment(batch: torch.Tensor, generator: torch.Generator, noise: float) -> torch.Tensor:
    """Random horizontal flips, small rotations/shifts/zooms, and gaussian noise (as kornia's augs)."""
    n = batch.shape[0]
    rand = torch.rand(n, 5, generator=generator).to(batch.device)
    flip = torch.where(rand[:, 0] < 0.5, -1.0, 1.0)
    angle = (rand[:, 1] - 0.5) * math.radians(30)
    scale = 0.9 + 0.2 * rand[:, 2]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * flip, -sin, (rand[:, 3] - 0.5) * 0.2], dim=1),
        torch.stack([sin * flip, cos, (rand[:, 4] - 0.5) * 0.2], dim=1),
    ], dim=1).to(batch.dtype)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if noise:
        facs = torch.rand(n, 1, 1, 1, generator=generator).to(batch) * noise
        batch = batch + facs * torch.randn(batch.shape, generator=generator).to(batch)
    return batch


@dataclass(frozen=True)
class ClipInput:
    """What CLIP's image tower expects: side length and the normalisation of its preprocess."""

    size: int
    mean: torch.Tensor  # [1, 3, 1, 1]
    std: torch.Tensor

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        return (batch - self.mean) / self.std


def clip_input(clip: Any) -> ClipInput:
    """Read the input size and mean/std from a ClipModel's preprocess pipeline."""
    norm = next(t for t in clip.preprocess.transforms if type(t).__name__ == "Normalize")
    size = clip.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    as_tensor = lambda v: torch.tensor(v, dtype=torch.float32, device=clip.device).view(1, 3, 1, 1)  # noqa: E731
    return ClipInput(int(size), as_tensor(norm.mean), as_tensor(norm.std))


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return the generator that drives the run's own randomness."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_freed_memory_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Have this process's allocator keep freed memory for reuse instead of handing it back to the
    kernel; True where it took effect (glibc on Linux), False elsewhere. Once on, on for the process.

    A step at 256^2 allocates ~1.3 GB of activations (32 MB maps at full resolution, saved for the
    backward pass) and frees them. glibc serves each allocation over its mmap threshold (at most
    32 MB) with a fresh mmap and unmaps it on free, so every step faults ~380,000 zeroed pages back
    in: ~0.7 s of kernel time per VQGAN decode forward+backward at 256^2 on one core
    (bench/README.md). Without mmap (M_MMAP_MAX 0) and without trimming the heap's top, freed
    blocks go back on malloc's free lists and the next step reuses them. The cost: the process
    keeps its peak heap (what a step needs anyway) after a run instead of shrinking.
    PyTorch's CPU allocator is plain malloc, so this is the knob (THP_MEM_ALLOC_ENABLE's huge
    pages measured slower here: compaction on fault)."""
    global _freed_memory_kept
    if _freed_memory_kept is None:
        _freed_memory_kept = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _freed_memory_kept = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _freed_memory_kept


# --- drawers -----------------------------------------------------------------------------------


class VqganDrawer:
    """Optimises VQGAN latents z; the picture is decode(quantise(z))."""

    name = "vqgan"

    def __init__(self, vqgan: Any, width: int, height: int, generator: torch.Generator,
                 init: torch.Tensor | None = None, channels_last: bool = False) -> None:
        self.vqgan = vqgan
        # channels_last: the decoder's convolutions in NHWC (the same values; faster where the
        # backend prefers it). The shared model's weights are re-laid out once, in place.
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            vqgan.model.to(memory_format=torch.channels_last)
        f = vqgan.factor
        self.width, self.height = width // f * f, height // f * f
        codebook = vqgan.codebook
        with torch.no_grad():
            if init is not None:
                image = F.interpolate(init.to(vqgan.device), size=(self.height, self.width), mode="bilinear",
                                      align_corners=False, antialias=True)
                z = vqgan.encode(image * 2 - 1)
            else:
                codes = torch.randint(codebook.shape[0], [(self.height // f) * (self.width // f)],
                                      generator=generator).to(vqgan.device)
                z = F.one_hot(codes, codebook.shape[0]).to(codebook.dtype) @ codebook
                z = z.view(1, self.height // f, self.width // f, -1).permute(0, 3, 1, 2)
        self.z = z.detach().clone().contiguous().requires_grad_(True)
        self.z_min = codebook.min(dim=0).values[None, :, None, None]
        self.z_max = codebook.max(dim=0).values[None, :, None, None]

    def parameters(self) -> list[torch.Tensor]:
        return [self.z]

    def synth(self) -> torch.Tensor:
        z_q = vector_quantize(self.z.movedim(1, 3), self.vqgan.codebook).movedim(3, 1)
        z_q = z_q.contiguous(memory_format=self.layout)
        return clamp_with_grad(self.vqgan.decode(z_q).add(1).div(2), 0, 1)

    @torch.no_grad()
    def clamp_(self) -> None:
        self.z.copy_(self.z.maximum(self.z_min).minimum(self.z_max))

    def state(self) -> dict[str, torch.Tensor]:
        return {"z": self.z.detach().cpu()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.z.copy_(state["z"].to(self.z))


class PixelDrawer:
    """Optimises a coarse RGB grid (logits); the picture is sigmoid(bilinear upsample(grid))."""

    name = "pixels"

    def __init__(self, device: torch.device, width: int, height: int, generator: torch.Generator,
                 init: torch.Tensor | None = None) -> None:
        self.width, self.height = width, height
        grid = (max(1, height // PIXEL_SCALE), max(1, width // PIXEL_SCALE))
        if init is not None:
            small = F.interpolate(init, size=grid, mode="area").clamp(0.02, 0.98)
            logits = torch.log(small / (1 - small))
        else:
            logits = torch.randn(1, 3, *grid, generator=generator) * 0.5
        self.logits = logits.to(device).contiguous().requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.logits]

    def synth(self) -> torch.Tensor:
        return torch.sigmoid(F.interpolate(self.logits, size=(self.height, self.width), mode="bilinear",
                                           align_corners=False))

    def clamp_(self) -> None:
        pass

    def state(self) -> dict[str, torch.Tensor]:
        return {"z": self.logits.detach().cpu()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.logits.copy_(state["z"].to(self.logits))


# --- a run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A CLIP embedding to pull towards (weight > 0) or push away from (weight < 0)."""

    embed: torch.Tensor  # [1, D]
    weight: float = 1.0
    stop: float = -math.inf


def text_targets(clip: Any, prompts: Sequence[WeightedPrompt]) -> list[Target]:
    embeds = clip.encode_texts([p.text for p in prompts]).to(clip.device)
    return [Target(embeds[i : i + 1], p.weight, p.stop) for i, p in enumerate(prompts)]


def image_target(clip: Any, image: Image.Image, weight: float = 1.0) -> Target:
    return Target(clip.encode_images([image.convert("RGB")]).to(clip.device), weight)


def embedding_target(clip: Any, vector: Any, weight: float = 1.0) -> Target:
    """A picture's stored CLIP embedding (/blend: an attachment's, or an indexed picture's) as a
    target, weighted as a text prompt is."""
    embed = torch.as_tensor(np.asarray(vector, dtype=np.float32)).reshape(1, -1)
    return Target(embed.to(clip.device), weight)


@dataclass
class Generation:
    """One VQGAN+CLIP (or pixels+CLIP) optimisation, advanced a step at a time.

    `augment=False` turns the cutout augmentations off (the equivalence test runs that way).
    `precision` "bf16" or "fp16" autocasts the forward pass (fp16 with a gradient scaler); the
    parameters and Adam stay float32.
    """

    clip: Any
    drawer: Any
    targets: list[Target]
    generator: torch.Generator
    cutouts: int = 32
    cut_pow: float = 1.0
    augment: bool = True
    lr: float = 0.1
    precision: str = "fp32"
    step_done: int = 0
    losses: list[float] = field(default_factory=list)
    captured: torch.Tensor | None = None  # see step(capture=True)

    def __post_init__(self) -> None:
        self.clip.model.requires_grad_(False)  # gradients flow to the image, never into CLIP's weights
        self.input = clip_input(self.clip)
        self.optimizer = torch.optim.Adam(self.drawer.parameters(), lr=self.lr)
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}: use one of {', '.join(PRECISIONS)}.")
        device = self.drawer.parameters()[0].device.type
        self._autocast = torch.autocast(device, dtype=PRECISIONS[self.precision] or torch.bfloat16,
                                        enabled=self.precision != "fp32")
        self._scaler = torch.amp.GradScaler(device) if self.precision == "fp16" else None

    def loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, image) for the current parameters, with gradients."""
        with self._autocast:
            image = self.drawer.synth()
            crops = make_cutouts(image, cut_size=self.input.size, cutn=self.cutouts, cut_pow=self.cut_pow,
                                 generator=self.generator, augment=self.augment)
            embeds = self.clip.image_encoder_for_grad()(self.input.normalize(crops)).float()
        total = sum(prompt_loss(embeds, t.embed, t.weight, t.stop) for t in self.targets)
        return total, image

    def step(self, *, capture: bool = False) -> float:
        """One optimiser step; returns the loss measured before it. `capture`: keep the picture its
        forward pass drew (the picture after `step_done` steps, before this one) in `captured`, so
        a caller that wants it (a timelapse frame) needs no decode of its own."""
        self.optimizer.zero_grad(set_to_none=True)
        total, image = self.loss()
        self.captured = image.detach().float() if capture else None
        if self._scaler is None:
            total.backward()
            self.optimizer.step()
        else:
            self._scaler.scale(total).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        self.drawer.clamp_()
        self.step_done += 1
        value = float(total.detach())
        self.losses.append(value)
        return value

    @torch.no_grad()
    def image(self) -> torch.Tensor:
        """The current picture, [1, 3, H, W] in [0, 1]."""
        return self.drawer.synth().detach()

    def png(self) -> bytes:
        return to_png(self.image())

    # -- checkpoints: everything needed to continue exactly -------------------------------------
    def state_bytes(self, extra: dict | None = None) -> bytes:
        """Everything needed to continue exactly, plus the caller's JSON-like `extra`."""
        buffer = io.BytesIO()
        torch.save({"drawer": self.drawer.state(), "optimizer": self.optimizer.state_dict(),
                    "generator": self.generator.get_state(), "step": self.step_done, "losses": self.losses,
                    "extra": extra or {}}, buffer)
        return buffer.getvalue()

    def load_state_bytes(self, data: bytes, *, with_optimizer: bool = True) -> dict:
        """Restore a `state_bytes` (only the latent when not `with_optimizer`); returns its `extra`."""
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        self.drawer.load_state(state["drawer"])
        if with_optimizer:
            self.optimizer.load_state_dict(state["optimizer"])
            self.generator.set_state(state["generator"])
            self.step_done = int(state["step"])
            self.losses = list(state["losses"])
        return dict(state.get("extra") or {})


def build_generation(clip: Any, vqgan: Any, *, prompts: Sequence[WeightedPrompt], drawer: str, width: int,
                     height: int, seed: int, cutouts: int, cut_pow: float = 1.0, augment: bool = True,
                     lr: float = 0.1, init: Image.Image | None = None,
                     image_prompts: Sequence[Image.Image] = (), precision: str = "fp32",
                     channels_last: bool | None = None, keep_memory: bool | None = None,
                     image_targets: Sequence[Target] = ()) -> Generation:
    """Set up a run: seed everything, make the drawer (from random codes or `init`), embed the prompts.
    `image_targets`: pictures already embedded (`embedding_target`), with their weights.
    `precision`, `channels_last` and `keep_memory` are speed settings (see Generation, VqganDrawer
    and keep_freed_memory); None: on for a CPU, where they measured faster (bench/README.md), off
    elsewhere (`keep_memory` is process-wide: once on, False does not turn it off)."""
    clip.model.requires_grad_(False)  # first: CLIP's kernels differ (slightly) once weights need no grad
    if keep_memory or (keep_memory is None and clip.device.type == "cpu"):
        keep_freed_memory()
    generator = seed_everything(seed)
    init_tensor = image_tensor(init) if init is not None else None
    if drawer == "vqgan":
        channels_last = vqgan.device.type == "cpu" if channels_last is None else channels_last
        canvas: Any = VqganDrawer(vqgan, width, height, generator, init_tensor, channels_last=channels_last)
    else:
        canvas = PixelDrawer(clip.device, width, height, generator, init_tensor)
    targets = (text_targets(clip, prompts) if prompts else []) + [image_target(clip, image) for image in image_prompts]
    targets += list(image_targets)
    return Generation(clip, canvas, targets, generator, cutouts=cutouts, cut_pow=cut_pow, augment=augment, lr=lr,
                      precision=precision)


def add_noise(generation: Generation, amount: float) -> None:
    """Perturb the drawer's parameters by `amount` x their standard deviation (for variations)."""
    with torch.no_grad():
        for param in generation.drawer.parameters():
            noise = torch.randn(param.shape, generator=generation.generator).to(param)
            param.add_(noise * param.std() * amount)
        generation.drawer.clamp_()



def to_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a [1, 3, H, W] tensor in [0, 1] (deterministic for equal tensors)."""
    array = image[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def image_tensor(image: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] float tensor in [0, 1] of an RGB PIL image."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()
