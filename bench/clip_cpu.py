"""CLIP on a CPU: torch eager (the reference) against each fast backend, measured in the same run.

    python bench/clip_cpu.py [--model ViT-B-32:random] [--rounds 3] [--json out.json]
    python bench/clip_cpu.py --label-build [--eager-classes 50]     # the ImageNet label matrix
    python bench/clip_cpu.py --smoke                                 # tiny preset, seconds

Per backend, tower (image, text) and batch (1, 32): rows/s, speedup over eager, the lowest cosine
between its embeddings and eager's, zero-shot top-1 agreement with eager (pictures x labels),
memory its load added, and the fraction of this machine's fp32 peak it reaches (the peak measured
here with a large matmul, the model's FLOPs counted by torch). Rounds are interleaved (load from
other processes hits every backend alike) and each row keeps its best round. Inputs are model
inputs: seeded pixel tensors, and token rows cut to each batch's longest prompt (both backends
trim). --label-build times the full ImageNet-1k label matrix (1000 classes x 80 templates) on the
fast backend, and eager on --eager-classes classes, extrapolated and labelled so.
A benchmark reports, it never fails: the exit code is 0 whatever the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

FAST_BACKENDS = ("onnx",)
BATCHES = (1, 32)


def rss_mib() -> float:
    """This process's resident memory now, MiB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gflops(size: int = 2048, repeats: int = 8) -> float:
    """fp32 GFLOP/s of a large square matmul on torch's threads (best of `repeats`): the machine's
    practical peak."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def flops(call: Callable[[], Any]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def load(model: str, backend: str, cache: Path) -> tuple[Any, float, float]:
    """(ClipModel, seconds, MiB of resident memory the load added)."""
    from engine.models.clip import load_clip

    before, t0 = rss_mib(), time.perf_counter()
    clip = load_clip(model, device="cpu", cache_dir=cache, backend=backend)
    return clip, time.perf_counter() - t0, rss_mib() - before


def inputs(clip: Any, batch: int, count: int) -> dict[str, list[torch.Tensor]]:
    """`count` seeded batches per tower: pixel tensors, and prompt tokens cut to each batch's longest."""
    from engine.models.clip import IMAGENET_CLASSNAMES, PROMPT_TEMPLATES

    generator = torch.Generator().manual_seed(batch)
    pixels = [torch.randn(batch, 3, clip.image_size, clip.image_size, generator=generator) for _ in range(count)]
    texts = [PROMPT_TEMPLATES[(7 * i) % 80](IMAGENET_CLASSNAMES[(13 * i) % 1000]) for i in range(batch * count)]
    tokens = clip.tokenizer(texts)
    rows = []
    for i in range(count):
        part = tokens[i * batch : (i + 1) * batch]
        rows.append(part[:, : int(clip.text_tower.used_lengths(part).max())] if clip.text_tower else part)
    return {"image": pixels, "text": rows}


def encoder(clip: Any, tower: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The call ClipModel.encode_images / encode_texts make per batch (after preprocess/tokenize)."""
    return clip._encode_pixels if tower == "image" else clip._encode_tokens


@torch.no_grad()
def best_seconds(call: Callable[[torch.Tensor], torch.Tensor], batches: list[torch.Tensor]) -> float:
    t0 = time.perf_counter()
    for batch in batches:
        call(batch)
    return (time.perf_counter() - t0) / len(batches)


@torch.no_grad()
def agreement(clips: dict[str, Any], count: int = 64, labels: int = 100) -> dict[str, tuple[float, float]]:
    """Per backend: (lowest cosine, zero-shot top-1 agreement) against eager on `count` seeded
    pictures x `labels` ImageNet labels, each backend with its own image and text embeddings."""
    from engine.models.clip import IMAGENET_CLASSNAMES

    eager = clips["torch"]
    generator = torch.Generator().manual_seed(99)
    pixels = torch.randn(count, 3, eager.image_size, eager.image_size, generator=generator) * 0.5
    names = [f"a photo of a {c}." for c in IMAGENET_CLASSNAMES[:: max(1, 1000 // labels)][:labels]]
    out: dict[str, tuple[float, float]] = {}
    ref_img = torch.cat([encoder(eager, "image")(pixels[i : i + 16]) for i in range(0, count, 16)])
    ref_txt = eager.encode_texts(names)
    ref_top = (ref_img @ ref_txt.T).argmax(dim=1)
    for name, clip in clips.items():
        img = torch.cat([encoder(clip, "image")(pixels[i : i + 16]) for i in range(0, count, 16)])
        txt = clip.encode_texts(names)
        cos = min(float(torch.nn.functional.cosine_similarity(img, ref_img).min()),
                  float(torch.nn.functional.cosine_similarity(txt, ref_txt).min()))
        out[name] = (cos, float(((img @ txt.T).argmax(dim=1) == ref_top).float().mean()))
    return out


@torch.no_grad()
def tower_rows(clips: dict[str, Any], rounds: int, iterations: dict[int, int], peak: float) -> list[dict]:
    """One row per backend, tower and batch; speedups against eager's best round in this run."""
    rows = []
    for tower in ("image", "text"):
        for batch in BATCHES:
            data = inputs(clips["torch"], batch, iterations[batch])
            best = {name: float("inf") for name in clips}
            for clip in clips.values():  # warm-up: first calls allocate and pick kernels
                encoder(clip, tower)(data[tower][0])
            for _ in range(rounds):
                for name, clip in clips.items():
                    best[name] = min(best[name], best_seconds(encoder(clip, tower), data[tower]))
            eager_out = torch.cat([encoder(clips["torch"], tower)(b) for b in data[tower]])
            work = flops(lambda: encoder(clips["torch"], tower)(data[tower][0]))
            for name, clip in clips.items():
                ours = torch.cat([encoder(clip, tower)(b) for b in data[tower]])
                cosine = float(torch.nn.functional.cosine_similarity(ours, eager_out).min())
                rows.append({"backend": name, "runs": clip.backend, "tower": tower, "batch": batch,
                             "per_s": batch / best[name], "speedup": best["torch"] / best[name], "cosine": cosine,
                             "peak_fraction": work / best[name] / 1e9 / peak,
                             "tokens": int(data[tower][0].shape[1]) if tower == "text" else None})
    return rows


def print_rows(rows: list[dict], memory: dict[str, dict]) -> None:
    print(f"{'backend':<8}{'tower':<7}{'batch':>6}{'per s':>10}{'speedup':>9}{'min cosine':>12}"
          f"{'top-1 agree':>12}{'of fp32 peak':>14}{'load MiB':>10}")
    for r in rows:
        print(f"{r['backend']:<8}{r['tower']:<7}{r['batch']:>6}{r['per_s']:>10.1f}{r['speedup']:>8.2f}x"
              f"{r['cosine']:>12.6f}{r['top1_agreement']:>12.3f}{r['peak_fraction']:>13.1%}"
              f"{memory[r['backend']]['load_mib']:>10.0f}")


def bench_main(args: argparse.Namespace) -> int:
    cache = Path(args.cache or tempfile.mkdtemp(prefix="clipbot-bench-cpu-"))
    print(f"model {args.model} · {platform.machine()} {os.cpu_count()} CPUs · torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) · Python {platform.python_version()} · exports in {cache}", flush=True)
    peak = peak_gflops()
    print(f"fp32 peak (2048^2 matmul, this run): {peak:.0f} GFLOP/s", flush=True)
    clips, memory = {}, {}
    for name in ("torch", *args.backends):
        clip, seconds, mib = load(args.model, name, cache)
        clips[name], memory[name] = clip, {"load_s": seconds, "load_mib": mib}
        print(f"  {name}: loaded in {seconds:.1f} s (+{mib:.0f} MiB), runs {clip.backend}: {clip.backend_reason}",
              flush=True)
    rows = tower_rows(clips, args.rounds, {1: args.iterations, 32: max(1, args.iterations // 8)}, peak)
    agree = agreement(clips, labels=args.labels)
    for r in rows:
        r["top1_agreement"] = agree[r["backend"]][1]
        r.update(memory[r["backend"]])
    print()
    print_rows(rows, memory)
    print(f"zero-shot agreement on 64 seeded pictures x {args.labels} labels: "
          + ", ".join(f"{n} top-1 {a:.3f} (min cosine {c:.6f})" for n, (c, a) in agree.items()))
    print(f"process peak memory {peak_mib():.0f} MiB")
    for name in args.backends:
        ratios = " · ".join(f"{r['tower']} b{r['batch']} {r['speedup']:.2f}x" for r in rows if r["backend"] == name)
        print(f"{name} over eager: {ratios}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def build(clip: Any, classes: list[str], batch: int | None) -> tuple[float, torch.Tensor]:
    from engine.models.clip import PROMPT_TEMPLATES
    from plugins.whatis import pipeline

    real = clip.encode_texts
    clip.encode_texts = lambda texts, progress=None: real(texts, batch_size=batch, progress=progress)
    try:
        t0 = time.perf_counter()
        matrix = pipeline.encode_labels(clip, classes, PROMPT_TEMPLATES)
        return time.perf_counter() - t0, matrix
    finally:
        del clip.encode_texts


def label_build_main(args: argparse.Namespace) -> int:
    from engine.models.clip import IMAGENET_CLASSNAMES

    cache = Path(args.cache or tempfile.mkdtemp(prefix="clipbot-bench-cpu-"))
    classes = list(IMAGENET_CLASSNAMES[: args.classes])
    step = max(1, len(classes) // args.eager_classes)
    subset = classes[::step][: args.eager_classes]
    print(f"label build · {args.model} · {os.cpu_count()} CPUs · torch {torch.get_num_threads()} threads · "
          f"{len(classes)} classes x 80 templates = {len(classes) * 80} prompts", flush=True)
    eager = load(args.model, "torch", cache)[0]
    results = {}
    for name in args.backends:
        clip = load(args.model, name, cache)[0]
        print(f"  {name}: runs {clip.backend} ({clip.backend_reason})", flush=True)
        build(clip, classes[:2], args.batch_size)  # warm-up
        seconds, matrix = build(clip, classes, args.batch_size)
        results[name] = (seconds, matrix[:, [classes.index(c) for c in subset]])
        print(f"{name}: ImageNet-{len(classes)} label matrix measured in full: {seconds:,.0f} s "
              f"({len(classes) * 80 / seconds:,.0f} prompts/s)", flush=True)
    seconds, reference = build(eager, subset, args.batch_size)
    scale = len(classes) / len(subset)
    print(f"torch (eager): {seconds:,.1f} s for {len(subset)} classes spread over the 1000, extrapolated "
          f"x{scale:.3g}: {seconds * scale:,.0f} s (EXTRAPOLATED)")
    for name, (fast_s, columns) in results.items():
        cos = float(torch.nn.functional.cosine_similarity(columns.T, reference.T).min())
        print(f"{name} over eager (eager extrapolated): {seconds * scale / fast_s:.2f}x · min cosine of the "
              f"{len(subset)} shared columns {cos:.6f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ViT-B-32:random", help="CLIP spec (default ViT-B-32:random)")
    parser.add_argument("--backends", default=",".join(FAST_BACKENDS), type=lambda v: [b for b in v.split(",") if b],
                        help="fast backends to compare with eager (default onnx)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each row keeps its best")
    parser.add_argument("--iterations", type=int, default=16, help="batch-1 calls per round (batch 32: /8)")
    parser.add_argument("--labels", type=int, default=100, help="ImageNet labels in the top-1 agreement check")
    parser.add_argument("--cache", help="models cache holding the exports (default: a fresh temporary one)")
    parser.add_argument("--json", type=Path, help="write the rows (backend, tower, batch, speedup, cosine, ...)")
    build_group = parser.add_argument_group("label-build mode")
    build_group.add_argument("--label-build", action="store_true", help="time the ImageNet label matrix instead")
    build_group.add_argument("--classes", type=int, default=1000, help="classes the fast backends build (default 1000)")
    build_group.add_argument("--eager-classes", type=int, default=50, help="classes eager builds, extrapolated")
    build_group.add_argument("--batch-size", type=int, help="prompts per batch (default: the product's)")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, few iterations: proves the bench runs")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update({"model": "tiny-test", "rounds": 1, "iterations": 8, "labels": 20, "classes": 20,
                           "eager_classes": 5})
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.label_build:
        return label_build_main(args)
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
