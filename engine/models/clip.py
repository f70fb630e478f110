"""CLIP models for workers: parse a model spec, load it from local files, pull weights ahead of time.

This is the only module in clipbot that imports open_clip. A spec is one of:
  - a preset name (`tiny-test`): a tiny seeded random model, meaningless, for tests and demos;
  - `ARCH:TAG`, an open_clip architecture plus a pretrained tag (`ViT-B-32:laion2b_s34b_b79k`);
  - `ARCH:/path/to/weights.pt` (or .pth/.bin/.safetensors, or any path with a separator);
  - `ARCH:random`: seeded random weights for a real architecture, meaningless.
ARCH is an open_clip name, a preset name, or the path of an open_clip model-config JSON.
Architectures whose text tower is a Hugging Face model (the multilingual `xlm-roberta-base-ViT-B-32`
family) also need that model's config and tokenizer files, which `engine.models.hf_text` finds
locally; the `tiny-multilingual` preset builds its own, offline.

Loading never touches the network: weights named by a tag must already be in the cache
(`pull_clip`, i.e. `clipbot models pull`, downloads them). Failures become `ModelUnavailable`
with a message that says what to do.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import huggingface_hub
import open_clip
import torch
from huggingface_hub import errors as _hf_errors
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, HFTextEncoder, MeanPooler
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer
from open_clip.transformer import TextTransformer
from PIL import Image

from engine.errors import ModelUnavailable
from engine.images import reduce_for_side
from engine.models import cpu_backend, downloads, hf_text, presets
from engine.models.cpu_backend import BACKENDS, OnnxClip
from engine.models.downloads import sha256_file  # noqa: F401 - re-exported
from engine.models.registry import SEEDED_BUILD_LOCK, registry, resolve_device

DEFAULT_CLIP_SPEC = "ViT-B-32:laion2b_s34b_b79k"
# Zero-shot vocabulary: the ImageNet-1k class names and the CLIP paper's 80 prompt templates.
IMAGENET_CLASSNAMES: tuple[str, ...] = tuple(open_clip.IMAGENET_CLASSNAMES)
PROMPT_TEMPLATES: tuple[Callable[[str], str], ...] = tuple(open_clip.OPENAI_IMAGENET_TEMPLATES)
SpecKind = Literal["preset", "pretrained", "file", "random"]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
_NETWORK_TIMEOUT_S = downloads.NETWORK_TIMEOUT_S
_OPEN_CLIP_URL_CACHE = "~/.cache/clip"  # where open_clip puts url downloads without a cache_dir
_CONFIG_LOCK = threading.Lock()  # open_clip's config registry is a module global
_TEXT_BATCH_CPU = 64
_TEXT_BATCH_CUDA = 1024
_TOKENIZE_CHUNK = 8192
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipSpec:
    arch: str  # open_clip architecture name, preset name, or path to a model-config JSON
    weights: str  # pretrained tag, checkpoint path, "random", or "" for a preset
    kind: SpecKind


@dataclass(eq=False)
class ClipModel:
    """A loaded CLIP model in eval mode. Embeddings come back on the CPU as float32, L2-normalised."""

    spec: str
    model: Any
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    meaningless: bool  # True for random weights (presets, ARCH:random): never show their answers as real
    embed_dim: int
    logit_scale: float
    fingerprint: str = ""  # names these exact weights, for caches keyed by model (file specs add size+mtime)
    text_tower: "_TextTower | _PaddedTextTower | None" = None  # set when texts may be encoded on a token prefix
    image_size: int = 224  # the side of the image tower's input, in pixels
    pad_id: int = 0  # the token id the tokenizer fills short texts with
    backend: str = "torch"  # what computes embeddings: "torch" (eager, the reference) or "onnx" (CPU only)
    backend_reason: str = ""  # why that backend, in a sentence (`clipbot models list`, the log)
    fast: "OnnxClip | None" = field(default=None, repr=False)  # the ONNX sessions when backend is "onnx"
    _grad_encoder: Any = field(default=None, init=False, repr=False)  # image_encoder_for_grad's, built once

    @torch.no_grad()
    def encode_images(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        """Embed images as an [N, embed_dim] tensor of unit vectors.

        Each picture is first box-reduced by a whole factor while its shorter side stays at least
        3 × image_size (`engine.images.reduce_for_side`; ImageRejected beyond its aspect ratio), so
        the cost of open_clip's preprocess is bounded whatever the picture's size. Pictures with a
        shorter side under 6 × image_size go to the preprocess untouched (the same embedding)."""
        batches = [
            torch.stack([self.preprocess(reduce_for_side(image, self.image_size))
                         for image in images[i : i + batch_size]])
            for i in range(0, len(images), batch_size)
        ]
        chunks = [self._encode_pixels(batch) for batch in batches]
        return torch.cat(chunks) if chunks else torch.empty(0, self.embed_dim)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Embed texts as an [N, embed_dim] tensor of unit vectors; `progress(done, total)` after
        each batch. Where the text tower allows it, texts are batched by token length and each
        batch runs only up to its longest text instead of the full context (same embeddings)."""
        batch_size = batch_size or text_batch_size(self.device)
        out = torch.empty(len(texts), self.embed_dim)
        done = 0
        # Tokenized a chunk at a time (tokenizing is slow too): progress shows from the start.
        for chunk in range(0, len(texts), _TOKENIZE_CHUNK):
            tokens = self.tokenizer(texts[chunk : chunk + _TOKENIZE_CHUNK])
            for rows, batch in self._text_batches(tokens, batch_size):
                out[chunk + rows] = self._encode_tokens(batch).float().cpu()
                done += len(rows)
                if progress is not None:
                    progress(done, len(texts))
        return out

    def too_long(self, text: str) -> bool:
        """Whether `text` fills the tokenizer's whole context (or more: the rest is cut off), so
        CLIP may not read all of it. `context_length` says how many tokens it reads."""
        return int(self.tokenizer([text])[0, -1]) != self.pad_id

    @property
    def context_length(self) -> int:
        """How many tokens (the start and end markers included) the text tower reads."""
        return int(self.tokenizer(["x"]).shape[1])

    def image_encoder_for_grad(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """`model.encode_image` (unnormalised features) for loops that backpropagate into the image
        (/imagine): the same weights and values, laid out for the backward pass.

        open_clip runs its vision transformer batch-first; nn.MultiheadAttention then works on a
        transposed, non-contiguous copy, and on a CPU the QKV projection of that copy (and its
        gradient) becomes a batched matmul over a broadcast weight instead of one matrix multiply:
        ~18% of a ViT-B/32 forward+backward. A sequence-first view of the same modules (shallow
        copies: no weight is copied) avoids it. Its patch embedding (a convolution whose stride is
        its kernel) runs as one matrix multiply of the cut-up image (`PatchEmbedding`): mkldnn's
        input gradient of that convolution costs ~10x its forward (~0.3 s for 8 ViT-B/32 crops
        on one core), the matmul's about its forward. Inference keeps the shared model as it is (its
        batch-first fast path). Built once per model; other architectures get `encode_image`.
        """
        if self._grad_encoder is None:
            visual = _sequence_first(self.model.visual)
            self._grad_encoder = visual if visual is not None else self.model.encode_image
        return self._grad_encoder

    def _text_batches(self, tokens: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(row indices, token rows) per batch: in order at full length, or, where the tower
        allows, sorted by used length and cut to each batch's longest."""
        if self.text_tower is None:
            for start in range(0, len(tokens), batch_size):
                rows = torch.arange(start, min(start + batch_size, len(tokens)))
                yield rows, tokens[rows]
            return
        lengths = self.text_tower.used_lengths(tokens)
        order = lengths.argsort(stable=True)
        for start in range(0, len(tokens), batch_size):
            rows = order[start : start + batch_size]
            yield rows, tokens[rows, : int(lengths[rows].max())]

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        fast = self.fast
        if fast is not None:
            try:
                return fast.encode_image(pixels)
            except Exception as exc:  # onnxruntime raises its own types
                self._fast_failed(exc)
        return self.model.encode_image(pixels.to(self.device), normalize=True).float().cpu()

    def _encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        fast = self.fast
        if fast is not None and fast.has_text and self.text_tower is not None:
            try:
                return fast.encode_text(tokens)
            except Exception as exc:
                self._fast_failed(exc)
        tokens = tokens.to(self.device)
        if self.text_tower is None:
            return self.model.encode_text(tokens, normalize=True)
        return self.text_tower.encode(tokens)

    def _fast_failed(self, exc: Exception) -> None:
        """The ONNX backend raised: torch computes this and every later batch (same answers)."""
        if self.fast is None:
            return
        self.fast, self.backend = None, "torch"
        self.backend_reason = f"the ONNX backend failed at run time ({cpu_backend._brief(exc)}); torch since"
        log.warning("CLIP %s: %s", self.spec, self.backend_reason)


def _sequence_first(visual: Any) -> Any | None:
    """A view of an open_clip vision tower that shares its modules' weights but runs its transformer
    sequence-first; None where the tower is not a batch-first transformer of multi-head attention."""
    import copy

    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not getattr(transformer, "batch_first", False) or blocks is None or not all(
            isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention) and b.attn.batch_first for b in blocks):
        return None

    def view(module: torch.nn.Module, **children: torch.nn.Module) -> torch.nn.Module:
        clone = copy.copy(module)  # shares parameters and buffers; own attribute dict
        clone._modules = {**module._modules, **children}
        return clone

    new_blocks = []
    for block in blocks:
        attn = copy.copy(block.attn)
        attn.batch_first = False
        new_blocks.append(view(block, attn=attn))
    seq_first = view(transformer, resblocks=torch.nn.ModuleList(new_blocks))
    seq_first.batch_first = False
    conv1 = getattr(visual, "conv1", None)
    patches = {"conv1": PatchEmbedding(conv1)} if PatchEmbedding.fits(conv1) else {}
    return view(visual, transformer=seq_first, **patches)


class PatchEmbedding(torch.nn.Module):
    """A ViT's patch embedding `conv` (kernel = stride = p, no padding) as one matrix multiply:
    the image cut into p x p patches, each flattened (channel, row, column) as the kernel is, times
    the kernel viewed [out, in * p * p]. The same function (sums in another order) with a cheap
    input gradient; the weight is `conv`'s own (shared, not copied). Returns [N, out, H/p, W/p]
    as a view of [N, H/p, W/p, out], which the tower's `reshape(N, out, -1)` keeps a view."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        if not self.fits(conv):
            raise ValueError("PatchEmbedding needs a convolution whose stride is its kernel, without padding")
        self.conv = conv

    @staticmethod
    def fits(conv: Any) -> bool:
        return isinstance(conv, torch.nn.Conv2d) and conv.stride == conv.kernel_size and conv.groups == 1 \
            and conv.dilation == (1, 1) and conv.padding in ((0, 0), "valid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, channels, height, width = x.shape
        ph, pw = self.conv.kernel_size
        gh, gw = height // ph, width // pw
        x = x[:, :, : gh * ph, : gw * pw]  # as the convolution: a partial last patch is dropped
        patches = x.reshape(n, channels, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, -1)
        weight = self.conv.weight.reshape(self.conv.out_channels, -1)
        out = patches @ weight.T if self.conv.bias is None else torch.addmm(self.conv.bias, patches, weight.T)
        return out.view(n, gh, gw, -1).permute(0, 3, 1, 2)


def text_batch_size(device: torch.device) -> int:
    """Texts per forward pass. On a CPU bigger batches stop paying off early (and cost memory);
    a GPU wants wide batches to stay busy. Measured with bench/whatis.py --label-matrix."""
    return _TEXT_BATCH_CUDA if device.type == "cuda" else _TEXT_BATCH_CPU


# --- running a text tower on a token prefix ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _TextTower:
    """The parts of an open_clip causal text tower, to run it on the first L tokens only.

    With a causal mask, position i attends to positions <= i, so the outputs at positions before
    L do not depend on the tokens after L; the pooled position (the EOT token for 'argmax') lies
    before L. Positional embedding and mask are sliced to L; everything else is per token.
    """

    token_embedding: Any
    positional_embedding: Any
    transformer: Any
    attn_mask: torch.Tensor
    ln_final: Any
    text_projection: Any
    pool_type: str
    eos_id: int | None

    def used_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per row, how many leading tokens the pooled feature depends on."""
        return _pool_index(tokens, self.pool_type, self.eos_id) + 1

    def encode(self, tokens: torch.Tensor, parts: Any = None) -> torch.Tensor:
        """Normalised features of token rows already cut to their batch's longest used length.
        `parts` (default: this tower) supplies the modules and tensors, as the ONNX export's
        module of the same names does (engine.models.cpu_backend)."""
        parts = parts if parts is not None else self
        length = tokens.shape[1]
        cast_dtype = self.transformer.get_cast_dtype()
        x = parts.token_embedding(tokens).to(cast_dtype) + parts.positional_embedding[:length].to(cast_dtype)
        x = parts.ln_final(parts.transformer(x, attn_mask=parts.attn_mask[:length, :length]))
        x = x[torch.arange(x.shape[0], device=x.device), _pool_index(tokens, self.pool_type, self.eos_id)]
        if isinstance(parts.text_projection, torch.nn.Linear):
            x = parts.text_projection(x)
        elif parts.text_projection is not None:
            x = x @ parts.text_projection
        return torch.nn.functional.normalize(x, dim=-1)


def _pool_index(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    # open_clip's text_global_pool, as positions: 'argmax' = the EOT token (the highest id)
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)  # 'first'


@dataclass(frozen=True, eq=False)
class _PaddedTextTower:
    """An open_clip Hugging Face text tower (HFTextEncoder), to run it on the first L tokens only.

    Its transformer attends both ways, but under a padding mask, and pools over the unpadded tokens
    (mean) or at the first one (CLS); RoBERTa-style position ids count unpadded tokens only. Padding
    comes last, so cutting it off changes no output: L is the last unpadded position + 1.
    """

    text: Any  # the HFTextEncoder: transformers model, pooler, projection
    pad_id: int

    def used_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per row, how many leading tokens are not padding (at least 1)."""
        positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
        return ((tokens != self.pad_id) * positions).amax(dim=-1).clamp(min=1)

    def encode(self, tokens: torch.Tensor, parts: Any = None) -> torch.Tensor:
        """Normalised features of token rows cut to their batch's longest used length; `parts`
        (default: this tower) supplies the module, as the ONNX export's module does."""
        text = (parts if parts is not None else self).text
        return torch.nn.functional.normalize(text(tokens), dim=-1)


_PADDING_SAFE_POOLERS = (MeanPooler, ClsPooler, ClsLastHiddenStatePooler)  # not MaxPooler: it reads the padding


def _padded_text_tower(model: Any) -> _PaddedTextTower | None:
    text = getattr(model, "text", None)
    if not (type(model).encode_text is open_clip.CustomTextCLIP.encode_text and isinstance(text, HFTextEncoder)
            and type(text).forward is HFTextEncoder.forward and type(text.pooler) in _PADDING_SAFE_POOLERS):
        return None
    pad_id = getattr(text.config, "pad_token_id", None)
    return None if pad_id is None or text.output_tokens else _PaddedTextTower(text, int(pad_id))


def _text_tower(model: Any) -> _TextTower | _PaddedTextTower | None:
    """The trimmable text tower of `model`, or None when it must run at full length: a
    bidirectional mask without padding mask, a CLS token, pooling at the last position, or a model
    class that replaces open_clip's own encode_text (CoCa...). Hugging Face towers trim their padding."""
    padded = _padded_text_tower(model)
    if padded is not None:
        return padded
    if type(model).encode_text is open_clip.CLIP.encode_text:
        parts, pool_type, eos_id = model, model.text_pool_type, getattr(model, "text_eos_id", None)
    elif (type(model).encode_text is open_clip.CustomTextCLIP.encode_text
          and type(model.text).forward is TextTransformer.forward):
        text = model.text
        if text.cls_emb is not None or getattr(text, "use_pad_mask", True):
            return None
        parts, pool_type, eos_id = text, text.pool_type, text.eos_id
    else:
        return None
    mask = getattr(parts, "attn_mask", None)
    if mask is None or pool_type not in ("argmax", "eos", "first"):
        return None
    return _TextTower(parts.token_embedding, parts.positional_embedding, parts.transformer, mask,
                      parts.ln_final, parts.text_projection, pool_type, eos_id)


@torch.no_grad()
def _checked_text_tower(model: Any, tokenizer: Callable, device: torch.device) -> _TextTower | _PaddedTextTower | None:
    """`_text_tower`, kept only if it reproduces open_clip's own encode_text on sample prompts:
    a guard against open_clip versions whose text tower works differently."""
    tower = _text_tower(model)
    if tower is None:
        return None
    tokens = tokenizer(["a photo of a dog.", "a bad photo of the big red car.", "x"]).to(device)
    full = model.encode_text(tokens, normalize=True).float()
    trimmed = tower.encode(tokens[:, : int(tower.used_lengths(tokens).max())]).float()
    if not torch.allclose(full, trimmed, rtol=1e-3, atol=1e-5):
        log.warning("text tower of %s does not run on a token prefix as expected; using the full context",
                    type(model).__name__)
        return None
    return tower


# --- specs -------------------------------------------------------------------------------------


def parse_clip_spec(spec: str) -> ClipSpec:
    """Parse and validate a CLIP model spec (see the module docstring); ModelUnavailable if invalid."""
    text = spec.strip()
    if text in presets.PRESETS:
        return ClipSpec(arch=text, weights="", kind="preset")
    arch, _, weights = _split_spec(text)
    _check_arch(arch)
    if not weights:
        raise ModelUnavailable(
            f"CLIP model {text!r} names no weights: use {arch}:TAG ({_tags_hint(arch)}) "
            f"or {arch}:/path/to/weights.pt."
        )
    kind = _weights_kind(weights)
    if kind == "pretrained":
        _check_tag(arch, weights)
    return ClipSpec(arch=arch, weights=weights, kind=kind)


def _split_spec(text: str) -> tuple[str, str, str]:
    # Architecture names never contain ':', so cut at the first one (a Windows drive in the weights
    # path stays whole); a config-JSON path may contain ':' itself, so cut right after '.json:'.
    cut = text.lower().find(".json:")
    if cut >= 0:
        return text[: cut + 5], ":", text[cut + 6 :]
    return text.partition(":")


def _weights_kind(weights: str) -> SpecKind:
    if weights.lower() == "random":
        return "random"
    if "/" in weights or "\\" in weights or weights.lower().endswith(_CHECKPOINT_SUFFIXES):
        return "file"
    return "pretrained"


def _is_config_path(arch: str) -> bool:
    return arch.lower().endswith(".json")


def _check_arch(arch: str) -> None:
    if _is_config_path(arch):
        if not Path(arch).expanduser().is_file():
            raise ModelUnavailable(f"The CLIP model config {arch} does not exist.")
        return
    known = open_clip.list_models()
    if arch in known or arch in presets.PRESETS:
        return
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelUnavailable(
        f"Unknown CLIP architecture {arch!r}.{hint} List the valid names with "
        '`python -c "import open_clip; print(open_clip.list_models())"`, use a preset '
        f"({', '.join(presets.PRESETS)}), or give the path of a model-config JSON."
    )


def _check_tag(arch: str, tag: str) -> None:
    if _is_config_path(arch) or arch in presets.PRESETS:
        raise ModelUnavailable(
            f"{tag!r} is not a weights file: a custom architecture needs one, as {arch}:/path/to/weights.pt."
        )
    if not open_clip.is_pretrained_cfg(arch, tag):
        raise ModelUnavailable(f"Unknown weights {tag!r} for CLIP architecture {arch}: {_tags_hint(arch)}.")


def _tags_hint(arch: str) -> str:
    tags = [] if _is_config_path(arch) else open_clip.list_pretrained_tags_by_model(arch)
    return f"valid tags are {', '.join(tags)}" if tags else "it has no published weights"


# --- loading -----------------------------------------------------------------------------------


def load_clip(spec: str, *, device: str = "auto", cache_dir: str | Path | None = None,
              backend: str = "torch") -> ClipModel:
    """Load the CLIP model `spec` names, from local files only, onto `device`, in eval mode.

    `backend` (auto, torch, onnx) picks what computes its embeddings: see `_attach_backend`; the
    ONNX export is cached under `cache_dir` (engine.models.cpu_backend)."""
    backend = _checked_backend(backend)
    parsed = parse_clip_spec(spec)
    target = resolve_device(device)
    arch, model, preprocess, tokenizer, text_source = _build(parsed, cache_dir)
    model = model.to(target).eval()
    fingerprint = _fingerprint(spec.strip(), parsed)
    if text_source is not None:  # the tokenizer is part of the model for caches keyed by it
        fingerprint += f"|text {hf_text.source_digest(text_source)[:16]}"
    clip = ClipModel(
        spec=spec.strip(),
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=target,
        meaningless=parsed.kind in ("preset", "random"),
        embed_dim=int(open_clip.get_model_config(arch)["embed_dim"]),
        logit_scale=float(model.logit_scale.exp().item()),
        fingerprint=fingerprint,
        text_tower=_checked_text_tower(model, tokenizer, target),
        image_size=_image_size(model),
        pad_id=_pad_id(tokenizer),
    )
    _attach_backend(clip, arch, backend, cache_dir, _fingerprint(spec.strip(), parsed))
    return clip


def _checked_backend(backend: str) -> str:
    name = str(backend or "auto").strip().lower()
    if name not in BACKENDS:
        raise ModelUnavailable(f"Unknown CLIP backend {backend!r}: use {', '.join(BACKENDS)}.")
    return name


def _attach_backend(clip: ClipModel, arch: str, backend: str, cache_dir: str | Path | None, note_key: str) -> None:
    """Give `clip` the ONNX backend where `backend` asks for it (onnx) or allows it (auto: on a
    CPU with onnxruntime installed) and its export passes the equivalence check; torch otherwise,
    with the reason in `clip.backend_reason` (a log line where onnx was asked for). The outcome is
    noted under `note_key` for `backend_status` (`clipbot models list`)."""
    if backend == "torch":
        clip.backend_reason = "CLIPBOT_CLIP_BACKEND=torch"
        return
    if clip.device.type != "cpu":
        clip.backend_reason = f"{backend}: ONNX serves CPUs only, {clip.device} runs torch"
        return
    towers = cpu_backend.Towers(clip.model, clip.text_tower, clip.tokenizer, clip.image_size, clip.embed_dim,
                                open_clip.get_model_config(arch) or {}, arch)
    try:
        clip.fast = cpu_backend.load_or_export(towers, cache_dir)
    except cpu_backend.BackendUnavailable as exc:
        clip.backend_reason = f"{backend}: {exc}; torch instead"
        installed = cpu_backend.onnxruntime_version() is not None
        (log.warning if installed or backend == "onnx" else log.info)(
            "CLIP %s runs on torch: %s", clip.spec, clip.backend_reason)
        if installed:
            cpu_backend.remember(cache_dir, note_key, None, str(exc))
        return
    clip.backend = "onnx"
    assert clip.fast.verdict is not None
    clip.backend_reason = (f"{backend}: a CPU, export {clip.fast.folder.name}, {clip.fast.verdict.describe()}"
                           + ("" if clip.fast.has_text else "; texts on torch (a text tower it cannot trim)"))
    cpu_backend.remember(cache_dir, note_key, clip.fast)


def _image_size(model: Any) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(max(size) if isinstance(size, (tuple, list)) else size)


def _fingerprint(spec: str, parsed: ClipSpec) -> str:
    if parsed.kind != "file":
        return spec
    stat = Path(parsed.weights).expanduser().stat()
    return f"{spec}|{stat.st_size}|{stat.st_mtime_ns}"


def get_clip(spec: str, *, device: str = "auto", cache_dir: str | Path | None = None,
             backend: str = "torch") -> ClipModel:
    """The process-wide ClipModel for `spec` on `device` with `backend`, loaded on first use
    through the registry."""
    target = resolve_device(device)
    backend = _checked_backend(backend)
    key = f"clip:{spec.strip()}@{target}/{backend}"
    return registry.get(key, lambda: load_clip(spec, device=str(target), cache_dir=cache_dir, backend=backend))


def backend_status(spec: str, *, device: str = "auto", cache_dir: str | Path | None = None,
                   backend: str = "auto") -> tuple[str, str]:
    """(backend, why) that loading `spec` would use, without loading it: from the setting, the
    device, onnxruntime, and the verdict of this model's last export (`clipbot models list`)."""
    backend = _checked_backend(backend)
    if backend == "torch":
        return "torch", "CLIPBOT_CLIP_BACKEND=torch"
    target = resolve_device(device)
    if target.type != "cpu":
        return "torch", f"{backend}: ONNX serves CPUs only, {target} runs torch"
    version = cpu_backend.onnxruntime_version()
    if version is None:
        return "torch", f"{backend}: onnxruntime is not installed (pip install -e '.[cpu]')"
    known = cpu_backend.recalled(cache_dir, _fingerprint(spec.strip(), parse_clip_spec(spec)))
    if known is None:
        return "onnx", (f"{backend}: a CPU with onnxruntime {version}; the first load exports this model "
                        "and checks it against torch (torch if the check fails)")
    name, about = known
    if name == "torch":
        return "torch", f"{backend}: at its last load {about}; torch instead"
    return "onnx", f"{backend}: a CPU, export {about}"


def _pad_id(tokenizer: Any) -> int:
    # open_clip's own tokenizer pads with 0; Hugging Face ones (HFTokenizer, SigLIP's) say which id
    pad_id = getattr(getattr(tokenizer, "tokenizer", None), "pad_token_id", None)
    return 0 if pad_id is None else int(pad_id)


def _build(parsed: ClipSpec, cache_dir: str | Path | None) -> tuple[str, Any, Any, Any, Path | None]:
    """(open_clip arch name, model, preprocess, tokenizer, text tower folder) for a parsed spec,
    on the CPU. The folder (config and tokenizer of a Hugging Face text tower) is None for the
    others."""
    arch = _arch_name(parsed.arch)
    text = _text_source(arch, cache_dir)
    if parsed.kind == "preset":
        return (arch, *create_seeded_clip(arch, presets.preset_seed(parsed.arch), text_source=text), text)
    if parsed.kind == "random":
        return (arch, *create_seeded_clip(arch, text_source=text), text)
    if parsed.kind == "file":
        return (arch, *_build_from_checkpoint(arch, _checked_file(parsed.weights), text_source=text), text)
    checkpoint = _cached_weights(arch, parsed.weights, cache_dir)
    if checkpoint is None:
        raise ModelUnavailable(
            f"CLIP weights for {arch}:{parsed.weights} are not downloaded; run `clipbot models pull` "
            f"on a machine with internet access, or set CLIPBOT_CLIP_MODEL={arch}:/path/to/file "
            f"({presets.OFFLINE_HINT})."
        )
    pretrained_cfg = open_clip.get_pretrained_cfg(arch, parsed.weights)
    return (arch, *_build_from_checkpoint(arch, _checked_file(checkpoint), pretrained_cfg, text_source=text), text)


def _text_source(arch: str, cache_dir: str | Path | None) -> Path | None:
    """The local folder of `arch`'s Hugging Face text tower (engine.models.hf_text), or None
    when its text tower is open_clip's own. ModelUnavailable when the files are not here."""
    name = hf_text.hf_text_name(open_clip.get_model_config(arch) or {})
    return hf_text.local_source(name, cache_dir) if name else None


def _arch_name(arch: str) -> str:
    if _is_config_path(arch):
        return register_model_config(arch)
    if arch in presets.PRESETS:
        return register_model_config(presets.preset_config_path(arch))
    return arch


def _build_from_checkpoint(arch: str, checkpoint: Path, pretrained_cfg: dict | None = None, *,
                           text_source: Path | None = None):
    try:
        return build_clip(arch, checkpoint, pretrained_cfg=pretrained_cfg, text_source=text_source)
    except ModelUnavailable:
        raise
    except Exception as exc:  # torch, safetensors and open_clip raise many types for a bad file
        raise ModelUnavailable(
            f"Could not load CLIP weights {checkpoint} as {arch} ({_brief(exc)}); "
            "check that the file is complete and made for this architecture."
        ) from exc


def build_clip(
    arch: str, checkpoint: Path | None = None, *, pretrained_cfg: dict | None = None,
    text_source: Path | None = None,
) -> tuple[Any, Any, Any]:
    """(model, preprocess, tokenizer) for open_clip `arch` on the CPU, with weights from
    `checkpoint`, or random ones drawn from torch's global RNG when there is none.

    `pretrained_cfg` (open_clip's entry for a tag) sets the preprocessing those weights expect.
    `text_source` is the local folder of a Hugging Face text tower's config and tokenizer: open_clip
    gets it instead of the Hub name, and never loads the Hub's text weights (the checkpoint has them).
    """
    cfg = pretrained_cfg or {}
    local_text = _local_text_cfg(arch, text_source) if text_source is not None else {}
    model, _, preprocess = open_clip.create_model_and_transforms(
        arch,
        pretrained=str(checkpoint) if checkpoint else None,
        # Weights trained with QuickGELU give wrong embeddings under plain GELU; open_clip only warns.
        force_quick_gelu=bool(cfg.get("quick_gelu", False)),
        image_mean=cfg.get("mean"),
        image_std=cfg.get("std"),
        image_interpolation=cfg.get("interpolation"),
        image_resize_mode=cfg.get("resize_mode"),
        **local_text,
    )
    tokenizer = _hf_tokenizer(arch, text_source) if text_source is not None else open_clip.get_tokenizer(arch)
    return model, preprocess, tokenizer


def _local_text_cfg(arch: str, folder: Path) -> dict:
    """create_model overrides that build `arch`'s Hugging Face text tower from `folder`, randomly
    initialised (the CLIP checkpoint's weights go in after)."""
    text_cfg = dict(open_clip.get_model_config(arch)["text_cfg"])
    text_cfg.update(hf_model_name=str(folder), hf_tokenizer_name=str(folder), hf_model_pretrained=False)
    return {"text_cfg": text_cfg, "pretrained_text": False}


def _hf_tokenizer(arch: str, folder: Path) -> HFTokenizer:
    """open_clip.get_tokenizer's Hugging Face branch, reading the tokenizer from `folder`."""
    text_cfg = open_clip.get_model_config(arch)["text_cfg"]
    try:
        return HFTokenizer(str(folder), context_length=text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH),
                           tokenizer_mode=text_cfg.get("tokenizer_mode"), **text_cfg.get("tokenizer_kwargs", {}))
    except Exception as exc:  # transformers raises OSError, ValueError, its own types for a bad folder
        raise ModelUnavailable(f"Could not load the tokenizer of {arch} from {folder} ({_brief(exc)}); "
                               "pull its text tower files again (`clipbot models pull`).") from exc


def create_seeded_clip(arch: str, seed: int = 0, *, text_source: Path | None = None) -> tuple[Any, Any, Any]:
    """Build open_clip architecture `arch` with weights drawn from `seed` (meaningless outputs).

    The CPU generator is seeded inside `fork_rng`, so the caller's RNG state is restored after.
    Builds take turns: two threads drawing from the one generator would get each other's numbers
    (a worker thread loading the model while a test loads its own copy).
    """
    with SEEDED_BUILD_LOCK, torch.random.fork_rng(devices=[]):  # devices=[]: don't touch (or initialise) CUDA
        torch.manual_seed(seed)
        return build_clip(arch, text_source=text_source)


def register_model_config(path: str | Path) -> str:
    """Make an open_clip model-config JSON known to open_clip under its file stem; return that name."""
    path = Path(path).expanduser().resolve()
    config = _read_model_config(path)
    with _CONFIG_LOCK:
        known = open_clip.get_model_config(path.stem)
        if known is None:
            open_clip.add_model_config(path)
        elif known != config:
            raise ModelUnavailable(
                f"The model config {path} is named {path.stem!r}, like a different architecture "
                "open_clip already knows; rename the file."
            )
    return path.stem


def _read_model_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"Cannot read the CLIP model config {path} ({_brief(exc)}).") from exc
    if not (isinstance(config, dict) and {"embed_dim", "vision_cfg", "text_cfg"} <= config.keys()):
        raise ModelUnavailable(
            f"{path} is not an open_clip model config: it needs embed_dim, vision_cfg and text_cfg."
        )
    return config


def _checked_file(weights: str | Path) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"The CLIP weights file {path} does not exist.")
    if not _looks_like_checkpoint(path):
        raise ModelUnavailable(
            f"{path} is not a PyTorch or safetensors checkpoint (unrecognised file header)."
        )
    return path


def _looks_like_checkpoint(path: Path) -> bool:
    with path.open("rb") as file:
        head = file.read(9)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return True  # torch.save zip (also TorchScript, .npz) or a legacy torch.save pickle
    # safetensors: little-endian u64 header size, then the JSON header
    size = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    return head[8:9] == b"{" and 8 + size <= path.stat().st_size


_brief = downloads.brief


# --- weights cache and downloads ---------------------------------------------------------------


def pull_clip(spec: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> Path | None:
    """Download the weights `spec` names unless they are cached, and return their local path.

    Presets and `ARCH:random` have no weights: returns None. A local file is checked, not copied.
    A Hugging Face text tower's config and tokenizer are pulled first (any kind of spec but a preset).
    `cache_dir` None means open_clip's defaults (the Hugging Face cache, or ~/.cache/clip for urls).
    Network failures raise ModelUnavailable within seconds.
    """
    parsed = parse_clip_spec(spec)
    text_name = _hf_text_name_of(parsed)
    if text_name:
        hf_text.pull_source(text_name, cache_dir, progress=progress)
    if parsed.kind in ("preset", "random"):
        return None
    if parsed.kind == "file":
        return _checked_file(parsed.weights)
    cached = _cached_weights(parsed.arch, parsed.weights, cache_dir)
    if cached is not None:
        return cached
    cfg = open_clip.get_pretrained_cfg(parsed.arch, parsed.weights)
    label = f"{parsed.arch}:{parsed.weights}"
    if cfg.get("hf_hub"):
        return _pull_hf(label, cfg["hf_hub"], cache_dir, progress)
    if cfg.get("url"):
        return _pull_url(label, cfg["url"], cache_dir, progress)
    raise ModelUnavailable(f"open_clip knows no download location for {label}.")


def weights_here(spec: str, *, cache_dir: str | Path | None = None) -> bool:
    """Whether the weights `spec` names are on this machine (nothing to download): a file and
    cache check that builds no model. Presets and `ARCH:random` need none, but a Hugging Face text
    tower's config and tokenizer must be here too; ModelUnavailable if the spec is invalid."""
    parsed = parse_clip_spec(spec)
    text_name = _hf_text_name_of(parsed)
    if text_name and not hf_text.source_here(text_name, cache_dir):
        return False
    if parsed.kind in ("preset", "random"):
        return True
    if parsed.kind == "file":
        return Path(parsed.weights).expanduser().is_file()
    return _cached_weights(parsed.arch, parsed.weights, cache_dir) is not None


def _hf_text_name_of(parsed: ClipSpec) -> str:
    return hf_text.hf_text_name(open_clip.get_model_config(_arch_name(parsed.arch)) or {})


def _cached_weights(arch: str, tag: str, cache_dir: str | Path | None) -> Path | None:
    """The local file open_clip would load for `arch:tag`, if it is already downloaded."""
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if cfg.get("hf_hub"):  # open_clip prefers the Hub when an entry has both
        repo_id, filenames = _hf_files(cfg["hf_hub"])
        for filename in filenames:
            found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
        return None
    if cfg.get("url"):
        path = _url_target(cfg["url"], cache_dir)
        return path if path.is_file() else None
    return None


def _hf_files(hf_hub: str) -> tuple[str, list[str]]:
    # open_clip's 'org/repo/' means the default file name; it fetches a .safetensors twin first.
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [filename[:-4] + ".safetensors", filename]
    return repo_id, [filename]


def _pull_hf(label: str, hf_hub: str, cache_dir: str | Path | None, progress: bool) -> Path:
    if downloads.hf_offline():
        raise _download_failed(label, "Hugging Face offline mode is on (HF_HUB_OFFLINE)")
    endpoint = downloads.hf_endpoint()
    _check_reachable(label, endpoint)
    repo_id, filenames = _hf_files(hf_hub)
    for filename in filenames:
        try:
            path = huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                cache_dir=cache_dir,
                endpoint=endpoint,
                etag_timeout=_NETWORK_TIMEOUT_S,
                tqdm_class=None if progress else downloads.QuietTqdm,
            )
            return Path(path)
        except _hf_errors.LocalEntryNotFoundError as exc:  # network, not a missing file
            raise _download_failed(label, f"{endpoint} did not answer ({_brief(exc)})") from exc
        except _hf_errors.EntryNotFoundError:
            continue  # e.g. no .safetensors twin: try the next file name
        except Exception as exc:  # HTTP errors, gated repos, disk full: one sentence, not a traceback
            raise _download_failed(label, _brief(exc)) from exc
    raise _download_failed(label, f"{repo_id} has none of {', '.join(filenames)}")


def _check_reachable(label: str, url: str) -> None:
    problem = downloads.check_reachable(url)
    if problem:
        raise _download_failed(label, problem)


def _pull_url(label: str, url: str, cache_dir: str | Path | None, progress: bool) -> Path:
    target = _url_target(url, cache_dir)
    expected = _expected_sha256(url)
    if target.is_file() and (not expected or sha256_file(target).startswith(expected)):
        return target
    return _download_url(label, url, target, expected, progress=progress)


def _url_target(url: str, cache_dir: str | Path | None) -> Path:
    # The same file name open_clip uses, so either of us finds the other's download.
    folder = Path(cache_dir or _OPEN_CLIP_URL_CACHE).expanduser()
    return folder / os.path.basename(urllib.parse.urlsplit(url).path)


def _expected_sha256(url: str) -> str:
    """The SHA-256 (or its prefix) that the url encodes, as open_clip reads it; "" if none."""
    segments = urllib.parse.urlsplit(url).path.split("/")
    if len(segments) >= 2 and re.fullmatch(r"[0-9a-f]{64}", segments[-2]):
        return segments[-2]  # .../<sha256>/RN50.pt (OpenAI)
    if "mlfoundations" in url:
        return os.path.splitext(segments[-1])[0].split("-")[-1]  # ...-<sha256 prefix>.pt
    return ""


def _download_url(label: str, url: str, target: Path, expected_sha256: str, *, progress: bool) -> Path:
    """Stream `url` to `target`, verifying the SHA-256 prefix if one is given (engine.models.downloads)."""
    try:
        downloads.download(url, target, expected_sha256=expected_sha256, progress=progress,
                           what=f"The CLIP weights for {label}")
    except downloads.DownloadFailed as exc:
        raise _download_failed(label, str(exc)) from exc
    return target


def _download_failed(label: str, reason: str) -> ModelUnavailable:
    arch = label.split(":", 1)[0]
    return ModelUnavailable(
        f"Could not download CLIP weights for {label}: {reason}; on a machine without internet access, "
        f"copy the weights file here and set CLIPBOT_CLIP_MODEL={arch}:/path/to/file ({presets.OFFLINE_HINT})."
    )

