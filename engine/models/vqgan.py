"""VQGAN models (taming-transformers) for workers: parse a spec, load it, pull its files.

This is the only module in clipbot that imports taming. It builds the autoencoder from
`taming.modules` (encoder, decoder, quantiser) rather than `taming.models`, whose Lightning
module pulls in pytorch-lightning (5 s to import) and builds a training loss that downloads
LPIPS/VGG weights. The checkpoint's state dict loads into the same parameter names.

A spec is one of:
  - an official name (`imagenet_f16_16384`, the default, `imagenet_f16_1024`, or the Gumbel
    `openimages_f8_8192`): config and checkpoint from the taming-transformers authors' links,
    downloaded by `clipbot models pull --vqgan NAME` into `<models dir>/vqgan/`;
  - `CONFIG.yaml:CHECKPOINT`, local files in taming's config format;
  - `NAME:random`: an official architecture with seeded random weights (MEANINGLESS; benchmarks);
  - the preset `tiny-test`: a tiny seeded random VQModel (MEANINGLESS; tests and offline demos).
Loading never touches the network; missing files raise ModelUnavailable saying what to do.
A loaded decoder upsamples with `PhaseUpsample` (`use_phase_upsampling`): taming's function, fewer FLOPs.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import taming.modules.diffusionmodules.model as _taming_model
import torch
import torch.nn.functional as F
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from engine.datadir import write_file
from engine.errors import ModelUnavailable
from engine.models import downloads
from engine.models.upsampling import PhaseUpsample
from engine.models.registry import SEEDED_BUILD_LOCK, registry, resolve_device

# taming's activation is `x * torch.sigmoid(x)`: two kernels forward, three backward, and two
# intermediates the size of each activation map. F.silu is the same function in one fused kernel
# (values equal to ~1e-7); on a CPU it makes an /imagine step ~10% faster (bench/imagine.py). Looked
# up at call time by taming's blocks, so setting it here covers every model this process builds.
TAMING_NONLINEARITY = _taming_model.nonlinearity
_taming_model.nonlinearity = F.silu

DEFAULT_VQGAN_SPEC = "imagenet_f16_16384"
CONFIG_DIR = Path(__file__).parent / "configs"
SpecKind = Literal["preset", "official", "file", "random"]

_HEIBOX = "https://heibox.uni-heidelberg.de/d/{}/files/?p=%2F{}&dl=1"


@dataclass(frozen=True)
class _Official:
    folder: str  # the authors' heibox share
    about: str
    # SHA-256 of the files, where one is published. None is, so `pull` records the hash of the
    # first download next to the file (NAME.ckpt.sha256) and later pulls verify against it.
    config_sha256: str = ""
    checkpoint_sha256: str = ""

    @property
    def config_url(self) -> str:
        return _HEIBOX.format(self.folder, "configs%2Fmodel.yaml")

    @property
    def checkpoint_url(self) -> str:
        return _HEIBOX.format(self.folder, "ckpts%2Flast.ckpt")


# Links from the taming-transformers README (also used by nerdyrodent/VQGAN-CLIP's download_models.sh).
OFFICIAL: dict[str, _Official] = {
    "imagenet_f16_16384": _Official("a7530b09fed84f80a887", "ImageNet, f=16, 16384 codes (980 MB)"),
    "imagenet_f16_1024": _Official("8088892a516d4e3baf92", "ImageNet, f=16, 1024 codes (958 MB)"),
    "openimages_f8_8192": _Official("2e5662443a6b4307b470", "Open Images, f=8, 8192 codes, Gumbel (376 MB)"),
}

_F16 = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
            ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
_F8 = dict(_F16, ch_mult=[1, 1, 2, 4], attn_resolutions=[32])
# The official architectures, for `NAME:random` (timing without the weights); the same values as
# the published configs.
_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "imagenet_f16_16384": {"target": "taming.models.vqgan.VQModel",
                           "params": {"embed_dim": 256, "n_embed": 16384, "ddconfig": _F16}},
    "imagenet_f16_1024": {"target": "taming.models.vqgan.VQModel",
                          "params": {"embed_dim": 256, "n_embed": 1024, "ddconfig": _F16}},
    "openimages_f8_8192": {"target": "taming.models.vqgan.GumbelVQ",
                           "params": {"embed_dim": 256, "n_embed": 8192, "kl_weight": 1e-8, "ddconfig": _F8}},
}
PRESETS = {"tiny-test": ("vqgan-tiny-test.yaml", 0)}  # name -> (config in CONFIG_DIR, seed)


@dataclass(frozen=True)
class VqganSpec:
    kind: SpecKind
    name: str  # official or preset name, or the config path for a file spec
    checkpoint: str = ""  # file specs only


def parse_vqgan_spec(spec: str) -> VqganSpec:
    """Parse and validate a VQGAN spec (see the module docstring); ModelUnavailable if invalid."""
    text = spec.strip()
    if text in PRESETS:
        return VqganSpec("preset", text)
    if text in OFFICIAL:
        return VqganSpec("official", text)
    head, sep, tail = text.partition(":") if ".yaml:" not in text.lower() else _split_yaml(text)
    if sep and tail.lower() == "random" and head in OFFICIAL:
        return VqganSpec("random", head)
    if sep and head.lower().endswith((".yaml", ".yml")):
        return VqganSpec("file", head, tail)
    raise ModelUnavailable(
        f"Unknown VQGAN model {text!r}: use {', '.join(OFFICIAL)}, CONFIG.yaml:CHECKPOINT (local files), "
        f"NAME:random, or the preset {', '.join(PRESETS)}."
    )


def _split_yaml(text: str) -> tuple[str, str, str]:
    cut = text.lower().index(".yaml:") + 5
    return text[:cut], ":", text[cut + 1:]


# --- the model -----------------------------------------------------------------------------------


class _VQModel(torch.nn.Module):
    """taming's VQModel/GumbelVQ without training parts: the same submodule names, so the
    published checkpoints' state dicts load as they are."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, gumbel: bool, kl_weight: float = 1e-8):
        super().__init__()
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        z_channels = ddconfig["z_channels"]
        if gumbel:
            self.quantize = GumbelQuantize(z_channels, embed_dim, n_embed=n_embed, kl_weight=kl_weight,
                                           temp_init=1.0)
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = torch.nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(embed_dim, z_channels, 1)


@dataclass(eq=False)
class VqganModel:
    """A loaded VQGAN in eval mode with gradients off for its weights (inputs may still need them)."""

    spec: str
    model: _VQModel
    device: torch.device
    gumbel: bool
    meaningless: bool  # random weights (presets, NAME:random): never present output as real

    @property
    def codebook(self) -> torch.Tensor:
        """[n_codes, e_dim] code vectors, as the straight-through quantiser uses them."""
        quantize = self.model.quantize
        return (quantize.embed if self.gumbel else quantize.embedding).weight

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each side (16 for f16)."""
        return 2 ** (self.model.decoder.num_resolutions - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Quantised latents [B, e_dim, H/f, W/f] of images in [-1, 1] (as taming's `encode`)."""
        h = self.model.quant_conv(self.model.encoder(images))
        return self.model.quantize(h)[0]

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Images (about [-1, 1]) from quantised latents."""
        return self.model.decoder(self.model.post_quant_conv(z_q))


def use_phase_upsampling(model: torch.nn.Module, enabled: bool = True) -> int:
    """Swap every taming `Upsample(with_conv=True)` in `model` for a `PhaseUpsample` sharing its
    conv (the same function with 2.25x fewer FLOPs: engine/models/upsampling.py), or, with
    `enabled=False`, back; returns how many were swapped. State-dict keys stay the same."""
    old = _taming_model.Upsample if enabled else PhaseUpsample
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is old and child.with_conv:
                parent.add_module(name, PhaseUpsample(child.conv) if enabled else _taming_upsample(child.conv))
                swapped += 1
    return swapped


def _taming_upsample(conv: torch.nn.Conv2d) -> torch.nn.Module:
    """taming's own Upsample around an existing conv (no new weights drawn)."""
    upsample = _taming_model.Upsample.__new__(_taming_model.Upsample)
    torch.nn.Module.__init__(upsample)
    upsample.with_conv = True
    upsample.conv = conv
    return upsample


def build_vqgan(config: dict) -> tuple[_VQModel, bool]:
    """(model on the CPU with random weights from torch's global RNG, is_gumbel) for a config
    in taming's format ({"model": {"target", "params"}} or its "model" part)."""
    model_cfg = config.get("model", config)
    target = str(model_cfg.get("target", ""))
    params = model_cfg.get("params") or {}
    if not target.endswith(("VQModel", "GumbelVQ")) or "ddconfig" not in params:
        raise ModelUnavailable(f"This is not a taming VQGAN config (target {target or 'missing'!r}); "
                               "use a VQModel or GumbelVQ config.")
    gumbel = target.endswith("GumbelVQ")
    model = _VQModel(dict(params["ddconfig"]), int(params["n_embed"]), int(params["embed_dim"]), gumbel,
                     float(params.get("kl_weight", 1e-8)))
    return model, gumbel


def load_vqgan(spec: str, *, device: str = "auto", cache_dir: str | Path | None = None) -> VqganModel:
    """Load the VQGAN `spec` names, from local files only, onto `device`, in eval mode."""
    parsed = parse_vqgan_spec(spec)
    target = resolve_device(device)
    if parsed.kind in ("preset", "random"):
        config = _read_config(CONFIG_DIR / PRESETS[parsed.name][0]) if parsed.kind == "preset" \
            else copy.deepcopy(_ARCHITECTURES[parsed.name])
        seed = PRESETS[parsed.name][1] if parsed.kind == "preset" else 0
        with SEEDED_BUILD_LOCK, torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG is left alone
            torch.manual_seed(seed)
            model, gumbel = build_vqgan(config)
            # taming initialises VQ codebooks in ±1/n_codes; trained ones spread far wider. N(0, 1)
            # keeps random models usable for tests and timing (the latent box is not a speck).
            if not gumbel:
                torch.nn.init.normal_(model.quantize.embedding.weight)
    else:
        config_path, checkpoint = _local_files(parsed, cache_dir)
        model, gumbel = build_vqgan(_read_config(config_path))
        _load_state(model, checkpoint)
    model = model.to(target).eval().requires_grad_(False)
    use_phase_upsampling(model)
    return VqganModel(spec=spec.strip(), model=model, device=target, gumbel=gumbel,
                      meaningless=parsed.kind in ("preset", "random"))


def get_vqgan(spec: str, *, device: str = "auto", cache_dir: str | Path | None = None) -> VqganModel:
    """The process-wide VqganModel for `spec` on `device`, loaded on first use through the registry."""
    target = resolve_device(device)
    key = f"vqgan:{spec.strip()}@{target}"
    return registry.get(key, lambda: load_vqgan(spec, device=str(target), cache_dir=cache_dir))


def vqgan_available(spec: str, cache_dir: str | Path | None = None) -> bool:
    """True when `spec` can load without downloading anything (no weights are read)."""
    try:
        parsed = parse_vqgan_spec(spec)
        if parsed.kind in ("preset", "random"):
            return True
        _local_files(parsed, cache_dir)
    except ModelUnavailable:
        return False
    return True


def _local_files(parsed: VqganSpec, cache_dir: str | Path | None) -> tuple[Path, Path]:
    if parsed.kind == "file":
        config, checkpoint = Path(parsed.name).expanduser(), Path(parsed.checkpoint).expanduser()
        for path, what in ((config, "config"), (checkpoint, "checkpoint")):
            if not path.is_file():
                raise ModelUnavailable(f"The VQGAN {what} file {path} does not exist.")
        return config, checkpoint
    config, checkpoint = official_paths(parsed.name, cache_dir)
    if not (config.is_file() and checkpoint.is_file()):
        raise ModelUnavailable(
            f"The VQGAN {parsed.name} is not downloaded; run `clipbot models pull --vqgan {parsed.name}` on a "
            "machine with internet access, or set CLIPBOT_VQGAN_MODEL=CONFIG.yaml:CHECKPOINT."
        )
    return config, checkpoint


def official_paths(name: str, cache_dir: str | Path | None) -> tuple[Path, Path]:
    """Where an official model's config and checkpoint live in the cache."""
    folder = Path(cache_dir or Path.home() / ".cache" / "clipbot").expanduser() / "vqgan"
    return folder / f"{name}.yaml", folder / f"{name}.ckpt"


def _read_config(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ModelUnavailable(f"Cannot read the VQGAN config {path} ({downloads.brief(exc)}).") from exc
    if not isinstance(config, dict):
        raise ModelUnavailable(f"{path} is not a taming VQGAN config.")
    return config


def _load_state(model: _VQModel, checkpoint: Path) -> None:
    try:
        try:
            raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception:
            # Lightning checkpoints pickle callback objects; the file is one the operator chose
            # (or the official download), so allow full unpickling for it.
            raw = torch.load(checkpoint, map_location="cpu", weights_only=False)
        state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
        if not isinstance(state, dict):
            raise ValueError("no state_dict inside")
        own = model.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise ValueError(f"{len(missing)} weights missing, e.g. {missing[0]}")
        model.load_state_dict({k: state[k] for k in own})
    except Exception as exc:
        raise ModelUnavailable(
            f"Could not load the VQGAN checkpoint {checkpoint} ({downloads.brief(exc)}); check that the file is "
            "complete and matches its config."
        ) from exc


# --- pulling ---------------------------------------------------------------------------------------


def pull_vqgan(spec: str, *, cache_dir: str | Path | None = None, progress: bool = True) -> tuple[Path, Path] | None:
    """Download an official model's config and checkpoint unless cached (verified); return their paths.

    Presets and `NAME:random` have no files (None); local files are checked, not copied.
    """
    parsed = parse_vqgan_spec(spec)
    if parsed.kind in ("preset", "random"):
        return None
    if parsed.kind == "file":
        return _local_files(parsed, cache_dir)
    official = OFFICIAL[parsed.name]
    config, checkpoint = official_paths(parsed.name, cache_dir)
    for url, path, known in ((official.config_url, config, official.config_sha256),
                             (official.checkpoint_url, checkpoint, official.checkpoint_sha256)):
        _pull_file(parsed.name, url, path, known, progress)
    return config, checkpoint


def _pull_file(name: str, url: str, path: Path, known_sha256: str, progress: bool) -> None:
    recorded = path.with_name(path.name + ".sha256")
    expected = known_sha256 or (recorded.read_text().strip() if recorded.is_file() else "")
    if path.is_file() and (not expected or downloads.sha256_file(path) == expected):
        return
    problem = downloads.check_reachable(url)
    if problem:
        raise _download_failed(name, problem)
    try:
        got = downloads.download(url, path, expected_sha256=expected, progress=progress,
                                 what=f"The VQGAN file {path.name}")
    except downloads.DownloadFailed as exc:
        raise _download_failed(name, str(exc)) from exc
    write_file(recorded, (got + "\n").encode())


def _download_failed(name: str, reason: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"Could not download the VQGAN {name}: {reason}; on a machine without internet access, copy its config "
        "and checkpoint here and set CLIPBOT_VQGAN_MODEL=CONFIG.yaml:CHECKPOINT."
    )
