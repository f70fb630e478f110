"""One GPU check, one table: /imagine's CUDA path against the reference loop, CLIP's image-encode
throughput, and a search backfill's pictures/s. `bench/gpu_check.sh` is the one-command wrapper.

    bash bench/gpu_check.sh                  # on the GPU machine: well under 8 minutes on one H200
    python3 bench/gpu_check.py --smoke       # tiny presets on the CPU (the tests run this)

Without CUDA it always runs as `--smoke`. No downloads: full-size architectures with random
weights, ViT-B-32 (open_clip, no pretrained weights) and the VQGAN imagenet_f16_1024 architecture.

/imagine (512^2, 32 cutouts by default): the reference loop of bench/imagine.py (nerdyrodent's
arithmetic, taming's decoder as it ships, CLIP's weights left requiring grad as a plain loop
leaves them), the same with CLIP frozen, and ours (`Generation.step`) in fp32, channels_last,
bf16 and fp16 autocast; same models, size, cutouts, prompts and seed, one after the other in this
process. it/s comes from the median timed step (after one warm-up step); "vs ref" is it/s over
the reference's. "loss diff" is the largest relative difference of the loss trajectory from the
reference's, "pixel diff" the largest difference of the final picture (in [0, 1]): float
rounding for fp32 loops, what the lower precision changes for autocast ones. A loop "keeps the
result" within LOSS_RTOL and PIXEL_ATOL. The goal line: ours >= 1.5x the reference's it/s.

CLIP: `model.encode_image` on batches of 256 random tensors already on the device, fp32 and bf16
autocast. Backfill: bench/search.py's indexing path (pictures -> hook -> pending queue -> drain
job -> decode, hash, preview, CLIP -> index) and `encode_images` alone, on the device.

A benchmark reports, it never fails: exit code 0 whatever the numbers (2 on bad arguments).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

import imagine as imagine_bench  # noqa: E402  (bench/imagine.py: the reference loop and ours)

LOSS_RTOL = 1e-3  # TF32 convolutions (cuDNN's default) in both loops, summed in other orders
PIXEL_ATOL = 1e-2
GOAL = 1.5
# (row name, build_generation options). channels_last re-lays out the shared decoder in place,
# so the contiguous loops run first.
OURS = [
    ("ours fp32", {"precision": "fp32", "channels_last": False}),
    ("ours bf16", {"precision": "bf16", "channels_last": False}),
    ("ours channels_last", {"precision": "fp32", "channels_last": True}),
    ("ours bf16+channels_last", {"precision": "bf16", "channels_last": True}),
    ("ours fp16+channels_last", {"precision": "fp16", "channels_last": True}),
]


@dataclass
class Row:
    check: str
    value: float
    unit: str
    vs_ref: float | None = None
    loss_diff: float | None = None
    pixel_diff: float | None = None
    peak_gib: float | None = None

    @property
    def keeps_result(self) -> bool:
        return self.loss_diff is not None and self.loss_diff <= LOSS_RTOL and (self.pixel_diff or 0) <= PIXEL_ATOL


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _peak(device: torch.device, reset: bool = False) -> float | None:
    if device.type != "cuda":
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats()
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def _loop_row(name: str, run, device: torch.device, ref: tuple | None) -> tuple[Row, tuple]:
    """Time one loop (`run()` -> times, losses, image); compare it with `ref`'s losses and image."""
    _peak(device, reset=True)
    times, losses, image = run()
    peak = _peak(device)
    rate = 1 / statistics.median(t[0] for t in times)
    row = Row(f"{name}", rate, "it/s", peak_gib=peak)
    if ref is not None:
        ref_rate, ref_losses, ref_image = ref
        row.vs_ref = rate / ref_rate
        row.loss_diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses, ref_losses))
        row.pixel_diff = float((image.float() - ref_image.float()).abs().max())
    return row, (rate, losses, image)


def imagine_rows(args: argparse.Namespace, clip, vqgan, device: torch.device) -> Iterator[Row]:
    """The reference loop, the reference with CLIP frozen, then each of our variants (row by row)."""
    size, cutouts, steps, seed, sync = args.size, args.cutouts, args.steps, args.seed, _sync(device)
    label = f"imagine {size}^2"
    ref_row, ref = _loop_row(f"{label} reference", lambda: imagine_bench._reference(
        clip, vqgan, size, cutouts, steps, seed, frozen=False, sync=sync), device, None)
    ref_row.vs_ref, ref_row.loss_diff, ref_row.pixel_diff = 1.0, 0.0, 0.0
    yield ref_row
    yield _loop_row(f"{label} reference-frozen", lambda: imagine_bench._reference(
        clip, vqgan, size, cutouts, steps, seed, frozen=True, sync=sync), device, ref)[0]
    for name, options in OURS:
        yield _loop_row(f"{label} {name}", lambda: imagine_bench._ours(
            clip, vqgan, size, cutouts, steps, seed, sync=sync, **options), device, ref)[0]


@torch.inference_mode()
def encode_rows(args: argparse.Namespace, clip, device: torch.device) -> list[Row]:
    """CLIP's image tower on device-resident batches: fp32, then bf16 autocast."""
    size, batch, sync = clip.image_size, args.encode_batch, _sync(device)
    images = torch.rand(batch, 3, size, size, device=device, generator=torch.Generator(device).manual_seed(0))
    rows = []
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for _ in range(2):  # warm-up
                clip.model.encode_image(images)
            sync()
            started = time.perf_counter()
            for _ in range(args.encode_batches):
                clip.model.encode_image(images)
            sync()
        rate = batch * args.encode_batches / (time.perf_counter() - started)
        rows.append(Row(f"clip encode_image bs{batch} {name}", rate, "img/s"))
    rows[1].vs_ref = rows[1].value / rows[0].value
    return rows


def backfill_rows(args: argparse.Namespace, device: torch.device) -> list[Row]:
    """bench/search.py's backfill: encode_images alone, then the whole indexing path."""
    import search as search_bench

    model_rate, path_rate, n = search_bench.indexing_rates(args.clip, device.type, args.backfill_images,
                                                           args.backfill_batch)
    return [Row(f"search backfill {n} pics: encode_images bs{args.backfill_batch}", model_rate, "img/s"),
            Row(f"search backfill {n} pics: whole path", path_rate, "img/s", vs_ref=path_rate / model_rate)]


def _fmt(value: float | None, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def print_header() -> None:
    print(f"{'check':<46} {'value':>9} {'unit':<6} {'vs ref':>7} {'loss diff':>9} {'pixel diff':>10} "
          f"{'peak GiB':>8}  same result")


def print_rows(rows: list[Row]) -> None:
    """Rows as each section finishes: a run stopped by the wrapper's timeout keeps what it printed."""
    for r in rows:
        same = "" if r.loss_diff is None else ("yes" if r.keeps_result else "NO")
        vs_ref = "-" if r.vs_ref is None else f"{r.vs_ref:.2f}x"
        print(f"{r.check:<46} {r.value:9.2f} {r.unit:<6} {vs_ref:>7} "
              f"{_fmt(r.loss_diff, '9.1e'):>9} {_fmt(r.pixel_diff, '10.1e'):>10} {_fmt(r.peak_gib, '8.2f'):>8}  {same}")


def goal_line(rows: list[Row]) -> str:
    """Ours against the reference: the best loop that keeps the result, and the fastest overall."""
    ours = [r for r in rows if " ours " in f" {r.check} " and r.vs_ref is not None]
    if not ours:
        return "goal: no /imagine rows (skipped)"
    kept = [r for r in ours if r.keeps_result]
    fastest = max(ours, key=lambda r: r.vs_ref)
    text = "goal: ours >= %.1fx the reference's it/s: " % GOAL
    if kept:
        best = max(kept, key=lambda r: r.vs_ref)
        verdict = "PASS" if best.vs_ref >= GOAL else "FAIL"
        text += f"{best.check.split(' ', 2)[2]} {best.vs_ref:.2f}x keeping the result ({verdict})"
    else:
        text += "no loop kept the result (FAIL)"
    if fastest not in kept:
        text += (f"; fastest {fastest.check.split(' ', 2)[2]} {fastest.vs_ref:.2f}x "
                 f"(loss diff {fastest.loss_diff:.1e}, pixel diff {fastest.pixel_diff:.1e})")
    return text


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny presets on the CPU (also without CUDA)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cutouts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop, after one warm-up step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip", default="ViT-B-32:random")
    parser.add_argument("--vqgan", default="imagenet_f16_1024:random")
    parser.add_argument("--encode-batch", type=int, default=256)
    parser.add_argument("--encode-batches", type=int, default=20)
    parser.add_argument("--backfill-images", type=int, default=1024)
    parser.add_argument("--backfill-batch", type=int, default=256)
    parser.add_argument("--budget-s", type=float, default=420,
                        help="skip the sections that would start after this many seconds")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.smoke or not torch.cuda.is_available():
        vars(args).update(smoke=True, size=32, cutouts=2, steps=1, clip="tiny-test", vqgan="tiny-test",
                          encode_batch=8, encode_batches=2, backfill_images=8, backfill_batch=8)
    return args


def main() -> None:
    args = _parse_args()
    logging.disable(logging.WARNING)  # open_clip warns that random weights are random
    from engine.models.clip import load_clip
    from engine.models.vqgan import load_vqgan

    device = torch.device("cpu" if args.smoke else "cuda")
    started = time.perf_counter()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke: tiny presets)"
    print(f"# gpu check on {name}: torch {torch.__version__}, {args.vqgan} + {args.clip}, {args.size}^2, "
          f"{args.cutouts} cutouts, {args.steps} timed steps")
    clip, vqgan = load_clip(args.clip, device=device.type), load_vqgan(args.vqgan, device=device.type)
    rows: list[Row] = []
    print_header()
    sections = [("imagine", lambda: imagine_rows(args, clip, vqgan, device)),
                ("clip encode", lambda: encode_rows(args, clip, device)),
                ("search backfill", lambda: backfill_rows(args, device))]
    for section, run in sections:
        if time.perf_counter() - started > args.budget_s:
            print(f"# {section}: skipped, over the {args.budget_s:.0f} s budget")
            continue
        try:
            for row in run():
                print_rows([row])
                rows.append(row)
        except Exception as exc:  # report and go on: one broken section must not hide the others
            print(f"# {section}: failed: {type(exc).__name__}: {exc}")
    print(goal_line(rows))
    print(f"# {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
