"""A faster CPU backend for CLIP: its image and text towers exported to ONNX, run by ONNX Runtime.

Torch eager stays the reference (and the GPU path); this backend only computes the same
embeddings sooner. A model is exported once, into `<cache>/onnx/<arch>-<digest>/`, where the digest
covers its config and every weight, so changed weights get a new export. Each export is checked
against eager on seeded inputs (cosine >= MIN_COSINE per embedding) and its verdict stored next to
it; the check runs again at every load, so a damaged file or a different onnxruntime never gives
a wrong answer: the caller falls back to torch.

The text graph takes token rows already cut to their batch's longest prompt (a dynamic sequence
axis), as eager's trimmed text tower does. Attention is exported as plain batch-first matrix
products (nn.MultiheadAttention's traced graph bakes the sequence length in).
Needs the `cpu` extra (onnxruntime, onnx); importing this module does not import them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from engine.errors import ModelUnavailable

BACKENDS = ("auto", "torch", "onnx")
MIN_COSINE = 0.9999
EXPORT_FORMAT = 1  # bump when the exported graphs change: older exports are then made again
_OPSET = 17
_CHECK_PROMPTS = ("x", "a photo of a dog.", "a bad photo of the big red car parked next to a tall building.",
                  "itap of a cat.", "a low resolution photo of the small green bird that sat on a branch.")
_DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "clipbot"
log = logging.getLogger(__name__)


class BackendUnavailable(ModelUnavailable):
    """The ONNX backend cannot serve this model here; the reason says why (torch serves it instead)."""


@dataclass(frozen=True)
class Verdict:
    """What the equivalence check against eager found, stored with an export as verdict.json."""

    passed: bool
    image_cosine: float  # the lowest cosine over the check's image embeddings
    text_cosine: float | None  # the same for texts; None when the text tower stays in torch
    onnxruntime: str = ""

    def describe(self) -> str:
        text = "" if self.text_cosine is None else f", text {self.text_cosine:.6f}"
        return f"equivalence check {'passed' if self.passed else 'FAILED'} (min cosine image {self.image_cosine:.6f}{text})"


def onnxruntime_version() -> str | None:
    """The installed onnxruntime's version, or None where it (or onnx) is not installed."""
    try:
        import onnx  # noqa: F401 - the exporter needs it
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def export_root(cache_dir: str | Path | None) -> Path:
    """Where exports live: `<cache_dir>/onnx`, next to the weights (default ~/.cache/clipbot/onnx)."""
    return Path(cache_dir).expanduser() / "onnx" if cache_dir else _DEFAULT_ROOT / "onnx"


def weights_digest(model: nn.Module, config: dict) -> str:
    """SHA-256 of the export format, the model config and every tensor of the state dict."""
    digest = hashlib.sha256(json.dumps([EXPORT_FORMAT, torch.__version__, config], sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


# --- the ONNX sessions ---------------------------------------------------------------------------


class OnnxClip:
    """ONNX Runtime sessions for a CLIP image tower and (optionally) its trimmed text tower.
    Both return L2-normalised float32 embeddings; a result of the wrong shape or with NaNs raises."""

    def __init__(self, folder: Path, embed_dim: int, verdict: Verdict | None = None) -> None:
        self.folder = folder
        self.embed_dim = embed_dim
        self.verdict = verdict
        self._image = _session(folder / "image.onnx", spin=False)
        text = folder / "text.onnx"
        self._text = _session(text, spin=True) if text.is_file() else None

    @property
    def has_text(self) -> bool:
        return self._text is not None

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] preprocessed pixels -> [N, embed_dim] unit vectors."""
        return self._run(self._image, "pixels", pixels.float(), len(pixels))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, L] token rows cut to their longest used length -> [N, embed_dim] unit vectors."""
        if self._text is None:
            raise RuntimeError("this export has no text tower")
        return self._run(self._text, "tokens", tokens.long(), len(tokens))

    def _run(self, session: Any, name: str, value: torch.Tensor, rows: int) -> torch.Tensor:
        out = torch.from_numpy(session.run(None, {name: value.cpu().contiguous().numpy()})[0])
        if out.shape != (rows, self.embed_dim) or not bool(torch.isfinite(out).all()):
            raise RuntimeError(f"the ONNX graph returned {tuple(out.shape)} values, some not finite")
        return out


def _session(path: Path, *, spin: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # torch's thread count is the worker's share of the cores (engine.worker.torch_threads)
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    # After each run ORT's threads spin-wait for more work (its default). The text tower runs
    # back to back (a label build: thousands of batches), where spinning saves ~10%; the image
    # tower runs between decoding and indexing pictures (a backfill), whose cores it would steal:
    # measured in bench/search.py, 0.83x of its model-only rate with spinning, 0.97x without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # errors only: its warnings are about the graph, not the user's input
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- export, check, cache ------------------------------------------------------------------------


@dataclass(frozen=True)
class Towers:
    """What the backend needs of a loaded model: the open_clip model, its trimmable text tower
    (None: texts stay in torch), its tokenizer and sizes, and the config its digest covers."""

    model: Any
    text_tower: Any
    tokenizer: Callable[[list[str]], torch.Tensor]
    image_size: int
    embed_dim: int
    config: dict
    arch: str


def load_or_export(towers: Towers, cache_dir: str | Path | None) -> OnnxClip:
    """The checked ONNX backend for `towers`, exported first if this model has no export yet.

    Raises BackendUnavailable (with the reason) when onnxruntime is missing, the export or its
    check fails, or a stored export does not load or no longer matches eager."""
    version = onnxruntime_version()
    if version is None:
        raise BackendUnavailable("onnxruntime is not installed (pip install -e '.[cpu]')")
    folder = export_root(cache_dir) / f"{towers.arch}-{weights_digest(towers.model, towers.config)[:20]}"
    if not (folder / "verdict.json").is_file():
        _export(towers, folder, version)
    verdict = Verdict(**json.loads((folder / "verdict.json").read_text()))
    if not verdict.passed:
        raise BackendUnavailable(f"the export at {folder} failed its {verdict.describe()}")
    try:
        fast = OnnxClip(folder, towers.embed_dim, verdict)
        now = check(towers, fast, version)
    except Exception as exc:  # a damaged or foreign file: onnxruntime raises its own types
        raise BackendUnavailable(f"the export at {folder} does not load ({_brief(exc)}); "
                                 "delete that folder to export again") from exc
    if not now.passed:
        raise BackendUnavailable(f"the export at {folder} no longer matches eager: {now.describe()}")
    return fast


def remember(cache_dir: str | Path | None, fingerprint: str, fast: OnnxClip | None, reason: str = "") -> None:
    """Note which export served the model `fingerprint` names (engine.models.clip.ClipModel), or
    with `fast` None why torch serves it (`reason`), so `recalled` can say so without loading it."""
    notes = export_root(cache_dir) / "served"
    if fast is not None:
        note = {"backend": "onnx", "about": f"{fast.folder.name}, "
                                            f"{fast.verdict.describe() if fast.verdict else 'unchecked'}"}
    else:
        note = {"backend": "torch", "about": reason}
    try:
        notes.mkdir(parents=True, exist_ok=True)
        (notes / f"{_key(fingerprint)}.json").write_text(json.dumps({"fingerprint": fingerprint, **note}))
    except OSError as exc:  # a read-only cache still serves: only `clipbot models list` knows less
        log.info("cannot note the ONNX export in %s (%s)", notes, exc)


def recalled(cache_dir: str | Path | None, fingerprint: str) -> tuple[str, str] | None:
    """What `remember` noted for `fingerprint`: ("onnx", export folder and verdict) or ("torch",
    why not onnx); None when nothing was noted."""
    try:
        note = json.loads((export_root(cache_dir) / "served" / f"{_key(fingerprint)}.json").read_text())
    except (OSError, ValueError):
        return None
    if note.get("fingerprint") != fingerprint or note.get("backend") not in ("onnx", "torch"):
        return None  # another model's note (a hash collision), or one in an older format
    return str(note["backend"]), str(note.get("about", ""))


def _key(fingerprint: str) -> str:
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:24]


def _export(towers: Towers, folder: Path, version: str) -> None:
    """Export both towers into a fresh folder, check them, store the verdict, then move the
    folder into place (atomic: a concurrent worker's finished export wins, ours is dropped)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        log.info("exporting %s to ONNX at %s (once per model)", towers.arch, folder)
        _export_image(towers, work / "image.onnx")
        if towers.text_tower is not None:
            _export_text(towers, work / "text.onnx")
        verdict = check(towers, OnnxClip(work, towers.embed_dim), version)
        (work / "verdict.json").write_text(json.dumps(asdict(verdict)) + "\n")
        log.info("ONNX export of %s: %s", towers.arch, verdict.describe())
        try:
            os.replace(work, folder)
        except OSError:  # another process finished first (a non-empty folder is in the way)
            pass
    except Exception as exc:
        raise BackendUnavailable(f"exporting {towers.arch} to ONNX failed ({_brief(exc)})") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


@torch.no_grad()
def check(towers: Towers, fast: OnnxClip, version: str) -> Verdict:
    """Compare `fast` with eager on seeded images (batches of 1 and 3) and on prompts of several
    lengths, trimmed per batch and at the full context: the lowest cosine per tower."""
    generator = torch.Generator().manual_seed(0)
    image_cosine = 1.0
    for rows in (1, 3):
        pixels = torch.randn(rows, 3, towers.image_size, towers.image_size, generator=generator)
        eager = towers.model.encode_image(pixels, normalize=True).float()
        image_cosine = min(image_cosine, _min_cosine(fast.encode_image(pixels), eager))
    text_cosine = None
    if fast.has_text:
        tokens = towers.tokenizer(list(_CHECK_PROMPTS))
        eager = towers.model.encode_text(tokens, normalize=True).float()
        lengths = towers.text_tower.used_lengths(tokens)
        cosines = [_min_cosine(fast.encode_text(tokens), eager)]
        for rows in (slice(0, 2), slice(1, 5)):
            cut = tokens[rows, : int(lengths[rows].max())]
            cosines.append(_min_cosine(fast.encode_text(cut), eager[rows]))
        text_cosine = min(cosines)
    passed = image_cosine >= MIN_COSINE and (text_cosine is None or text_cosine >= MIN_COSINE)
    return Verdict(passed, image_cosine, text_cosine, version)


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


# --- the graphs ----------------------------------------------------------------------------------


class _ImageGraph(nn.Module):
    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.visual(pixels), dim=-1)


class _TextGraph(nn.Module):
    """The trimmed text tower (engine.models.clip._TextTower) as a module, so that its weights
    are registered parameters of the traced graph, not constants."""

    def __init__(self, tower: Any) -> None:
        super().__init__()
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = _plain_attention(tower.transformer)
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self._tower = tower

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._tower.encode(tokens, parts=self)


class _ModuleTextGraph(nn.Module):
    """A text tower that is one module already (engine.models.clip._PaddedTextTower: a Hugging Face
    transformer with its pooler and projection), run on rows cut to their longest unpadded text."""

    def __init__(self, tower: Any) -> None:
        super().__init__()
        self.text = tower.text
        self._tower = tower

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._tower.encode(tokens, parts=self)


def _text_graph(tower: Any) -> nn.Module:
    return _ModuleTextGraph(tower) if isinstance(getattr(tower, "text", None), nn.Module) else _TextGraph(tower)


def _export_image(towers: Towers, path: Path) -> None:
    visual = copy.copy(towers.model.visual)
    visual._modules = {**visual._modules}
    if "transformer" in visual._modules:
        visual._modules["transformer"] = _plain_attention(visual.transformer)
    pixels = torch.zeros(2, 3, towers.image_size, towers.image_size)
    _trace(_ImageGraph(visual), pixels, path, "pixels", {0: "batch"})


def _export_text(towers: Towers, path: Path) -> None:
    tokens = towers.tokenizer(["a photo of a dog.", "a cat."])
    tokens = tokens[:, : int(towers.text_tower.used_lengths(tokens).max())]
    _trace(_text_graph(towers.text_tower), tokens, path, "tokens", {0: "batch", 1: "length"})


def _trace(module: nn.Module, example: torch.Tensor, path: Path, name: str, axes: dict[int, str]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes: the check covers them
        # Grad mode on: under no_grad nn.MultiheadAttention takes a fused path with no ONNX export.
        torch.onnx.export(module.eval(), (example,), str(path), input_names=[name], output_names=["embedding"],
                          dynamic_axes={name: axes, "embedding": {0: "batch"}}, opset_version=_OPSET,
                          dynamo=False)


def _plain_attention(transformer: nn.Module) -> nn.Module:
    """A view of an open_clip batch-first transformer (weights shared, nothing copied) whose
    self-attention runs as explicit matrix products; the transformer itself where it is not one."""
    blocks = getattr(transformer, "resblocks", None)
    if not getattr(transformer, "batch_first", False) or blocks is None or not all(
            isinstance(getattr(b, "attn", None), nn.MultiheadAttention) and b.attn.batch_first
            and b.attn._qkv_same_embed_dim for b in blocks):
        return transformer
    new_blocks = []
    for block in blocks:
        clone = copy.copy(block)
        clone._modules = {**block._modules, "attn": _SelfAttention(block.attn)}
        new_blocks.append(clone)
    view = copy.copy(transformer)
    view._modules = {**transformer._modules, "resblocks": nn.ModuleList(new_blocks)}
    return view


class _SelfAttention(nn.Module):
    """nn.MultiheadAttention's batch-first self-attention (same weights) as plain tensor ops, with
    no fixed batch or sequence size in the traced graph."""

    def __init__(self, attn: nn.MultiheadAttention) -> None:
        super().__init__()
        self.in_proj_weight, self.in_proj_bias, self.out_proj = attn.in_proj_weight, attn.in_proj_bias, attn.out_proj
        self.heads, self.head_dim = attn.num_heads, attn.head_dim

    def forward(self, query: torch.Tensor, key: Any = None, value: Any = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        qkv = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        weights = (q * self.head_dim ** -0.5) @ k.transpose(-1, -2)
        if attn_mask is not None:
            weights = weights + attn_mask
        out = (weights.softmax(dim=-1) @ v).transpose(1, 2).flatten(-2)
        return self.out_proj(out), None
