"""Seconds per /imagine step: our loop (`plugins.imagine.pipeline.Generation`) vs a plain reference
loop written here from the same primitives, same models, size, cutouts and seed; plus time from job
start to the first snapshot on a warm embedded worker, and peak memory.

    python bench/imagine.py [--sizes 128 256] [--cutouts 8] [--steps 2] [--json out.json]

Defaults time the real f16 VQGAN and ViT-B/32 architectures with random weights (no downloads):
`imagenet_f16_16384:random` and `ViT-B-32:random`. Each loop runs in its own forked process (so
its peak RSS is its own), with one warm-up step before `--steps` timed ones; augmentations are on
in both and driven by the same seeded generator, so both loops must give the same losses (checked,
rtol 1e-4). The reference runs taming as it ships (x * sigmoid(x)) and its own vector quantiser
(nerdyrodent's: a one-hot matmul under autograd) and calls open_clip's `encode_image`; ours has
the loader's fused SiLU, a lookup, and CLIP's vision transformer sequence-first
(`ClipModel.image_encoder_for_grad`), the decoder's upsampling as phase convolutions
(`engine.models.upsampling`), CLIP's patch embedding as one matmul and, on a CPU, the decoder in
channels_last and freed memory kept for reuse (`pipeline.keep_freed_memory`, process-wide).
With `--rounds N` the loops run N times, interleaved, and each reports its fastest step, as
wall time and as CPU time (all threads; it moves less when other processes share the cores).
`--levers` adds our loop with one speed-up left out each (LEVERS), and the frozen reference with
the process-wide allocator setting ours makes on a CPU (`keep_freed_memory`). The reference runs twice:
with CLIP as `load_clip` returns it (weights requiring grad, as a straightforward loop leaves
them) and with CLIP frozen. A benchmark reports, it never fails: the exit code is 0 whatever
the numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PROMPT = "a watercolor fox:1 | blurry:-0.5"
# `--levers`: our loop with one speed-up left out each, to measure what each buys in the same run.
# name -> (build_generation options, decoder upsampling as taming ships it, CLIP's patch embedding
# as its convolution)
LEVERS: dict[str, tuple[dict, bool, bool]] = {
    "ours-no-phase-upsample": ({}, True, False),
    "ours-no-channels-last": ({"channels_last": False}, False, False),
    "ours-no-patch-matmul": ({}, False, True),
    "ours-no-keep-memory": ({"keep_memory": False}, False, False),
    # our loop before issue 16's levers
    "ours-none": ({"channels_last": False, "keep_memory": False}, True, True),
}
# The allocator setting is process-wide, not part of a loop: with --levers the reference runs with
# it too, to show how much of ours' lead it is.
REFERENCE_KEEP_MEMORY = "reference-keep-memory"


def _models(clip_spec: str, vqgan_spec: str):
    from engine.models.clip import load_clip
    from engine.models.vqgan import load_vqgan

    return load_clip(clip_spec, device="cpu"), load_vqgan(vqgan_spec, device="cpu")


def _now() -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time (all threads) moves less than wall time when other processes
    share the cores: a busy neighbour delays our threads but does not add to their CPU time."""
    return time.perf_counter(), time.process_time()


def _since(started: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - started[0], cpu - started[1]


def _ours(clip, vqgan, size: int, cutouts: int, steps: int, seed: int, sync=lambda: None, **options):
    """(step times, losses, final image) of `Generation.step`; `options` go to `build_generation`."""
    from plugins.imagine import pipeline
    from plugins.imagine.prompts import parse_prompts

    run = pipeline.build_generation(clip, vqgan, prompts=parse_prompts(PROMPT), drawer="vqgan", width=size,
                                    height=size, seed=seed, cutouts=cutouts, **options)
    times = []
    for _ in range(steps + 1):
        sync()
        started = _now()
        run.step()  # ends with float(loss): a device sync
        times.append(_since(started))
    return times[1:], run.losses, run.image()


@contextlib.contextmanager
def taming_as_it_ships(vqgan):
    """taming's decoder as it ships, for the reference loop: its activation x * sigmoid(x) and
    its Upsample (nearest x2, then a 3x3 conv); ours is put back afterwards."""
    import taming.modules.diffusionmodules.model as taming_model

    from engine.models.vqgan import TAMING_NONLINEARITY, use_phase_upsampling

    ours = taming_model.nonlinearity
    taming_model.nonlinearity = TAMING_NONLINEARITY
    swapped = use_phase_upsampling(vqgan.model, enabled=False)
    try:
        yield
    finally:
        taming_model.nonlinearity = ours
        if swapped:
            use_phase_upsampling(vqgan.model)


def _reference(clip, vqgan, size: int, cutouts: int, steps: int, seed: int, frozen: bool, sync=lambda: None):
    """nerdyrodent/VQGAN-CLIP's loop reduced to its arithmetic, from the pipeline's primitives."""
    with taming_as_it_ships(vqgan):
        return _reference_loop(clip, vqgan, size, cutouts, steps, seed, frozen, sync)


def _reference_loop(clip, vqgan, size: int, cutouts: int, steps: int, seed: int, frozen: bool, sync):
    import torch
    import torch.nn.functional as F

    from plugins.imagine import pipeline as P

    def decode(z_q):
        return vqgan.model.decoder(vqgan.model.post_quant_conv(z_q))

    def vector_quantize(x, codebook):  # the reference's: distances and a one-hot matmul, all under autograd
        d = x.pow(2).sum(dim=-1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * x @ codebook.T
        x_q = F.one_hot(d.argmin(-1), codebook.shape[0]).to(d.dtype) @ codebook
        return P.replace_grad(x_q, x)

    clip.model.requires_grad_(not frozen)
    gen = P.seed_everything(seed)
    codebook = vqgan.codebook
    toks = size // vqgan.factor
    codes = torch.randint(codebook.shape[0], [toks * toks], generator=gen).to(codebook.device)
    one_hot = F.one_hot(codes, codebook.shape[0]).float()
    z = (one_hot @ codebook).view(1, toks, toks, -1).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    z_min = codebook.min(dim=0).values[None, :, None, None]
    z_max = codebook.max(dim=0).values[None, :, None, None]
    texts = clip.encode_texts(["a watercolor fox", "blurry"]).to(codebook.device)
    weights = [1.0, -0.5]
    cin = P.clip_input(clip)
    opt = torch.optim.Adam([z], lr=0.1)
    losses, times = [], []
    for _ in range(steps + 1):
        sync()
        started = _now()
        opt.zero_grad()
        z_q = vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)
        out = P.clamp_with_grad(decode(z_q).add(1).div(2), 0, 1)
        crops = P.make_cutouts(out, cut_size=cin.size, cutn=cutouts, cut_pow=1.0, generator=gen, augment=True)
        embeds = clip.model.encode_image((crops - cin.mean) / cin.std).float()
        loss = sum(abs(w) * (P.spherical_distance(embeds, texts[i : i + 1]) * math.copysign(1, w)).mean()
                   for i, w in enumerate(weights))
        loss.backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.maximum(z_min).minimum(z_max))
        losses.append(float(loss.detach()))  # a device sync too: the step is done
        times.append(_since(started))
    with torch.no_grad():  # the picture after the last step, as ours reports it
        final = decode(vector_quantize(z.movedim(1, 3), codebook).movedim(3, 1)).add(1).div(2).clamp(0, 1)
    return times[1:], losses, final


def _child(kind: str, args: argparse.Namespace, size: int, out) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clip, vqgan = _models(args.clip, args.vqgan)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if kind == "ours" or kind in LEVERS:
        options, taming_upsample, conv_patches = LEVERS.get(kind, ({}, False, False))
        if taming_upsample:
            from engine.models.vqgan import use_phase_upsampling

            use_phase_upsampling(vqgan.model, enabled=False)
        if conv_patches:  # the encoder's view with open_clip's own conv1 put back
            encoder = clip.image_encoder_for_grad()
            if "conv1" in getattr(encoder, "_modules", {}):
                encoder._modules["conv1"] = clip.model.visual.conv1
        times, losses, _ = _ours(clip, vqgan, size, args.cutouts, args.steps, args.seed, **options)
    else:
        if kind == REFERENCE_KEEP_MEMORY:
            from plugins.imagine.pipeline import keep_freed_memory

            keep_freed_memory()
        times, losses, _ = _reference(clip, vqgan, size, args.cutouts, args.steps, args.seed,
                                      kind != "reference")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.send({"times": times, "losses": losses, "peak_mb": peak / 1024, "loop_mb": (peak - base) / 1024})


def _measure(kind: str, args: argparse.Namespace, size: int) -> dict:
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(kind, args, size, send))
    proc.start()
    result = receive.recv()
    proc.join()
    return result


def _first_snapshot(args: argparse.Namespace, size: int) -> dict:
    """Job start -> first snapshot event on the embedded engine, second job (models warm)."""
    import asyncio

    from bot.app import open_app
    from bot.config import Settings

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(_env_file=None, data_dir=Path(data_dir), clip_model=args.clip, vqgan_model=args.vqgan,
                            device="cpu")
        with open_app(settings) as app:
            engine = app.engine

            async def one(seed: int) -> float:
                job = engine.submit("imagine.generate", {"prompt": PROMPT, "seed": seed, "width": size,
                                                         "height": size, "steps": 2, "every": 1, "drawer": "vqgan"},
                                    queue="gpu-long")
                started = first = None
                async for event in engine.follow(job, job_timeout=math.inf):
                    if event.kind == "started":
                        started = event.at
                    if event.kind == "progress" and event.data.get("snapshot") and first is None:
                        first = event.at
                return first - started

            cold = asyncio.run(one(1))
            warm = min(asyncio.run(one(seed)) for seed in range(2, 2 + max(1, args.rounds)))
    return {"cold_s": cold, "warm_s": warm}


def _print_rows(size: int, rows: dict) -> None:
    """One line per loop: its fastest step (the least disturbed by other processes on a shared
    machine), wall and CPU, and both as ratios to the reference's fastest."""
    ref = rows["reference"]
    ref_wall, ref_cpu = min(t[0] for t in ref["times"]), min(t[1] for t in ref["times"])
    for kind, row in rows.items():
        per_step, cpu = min(t[0] for t in row["times"]), min(t[1] for t in row["times"])
        same = all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(row["losses"], ref["losses"]))
        row.update(per_step=per_step, ratio=per_step / ref_wall, cpu_per_step=cpu, cpu_ratio=cpu / ref_cpu, same=same)
        print(f"{size:>4}^2 {kind:<21} {per_step:8.2f} {row['ratio']:6.2f} {cpu:7.2f} {row['cpu_ratio']:9.2f} "
              f"{row['peak_mb']:8.0f} {row['loop_mb']:8.0f}  {'yes' if same else 'NO'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--cutouts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per loop (after one warm-up step)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--clip", default="ViT-B-32:random")
    parser.add_argument("--vqgan", default="imagenet_f16_16384:random")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the three loops this many times, interleaved; each keeps its fastest step "
                             "(load from other processes then hits all three alike)")
    parser.add_argument("--levers", action="store_true",
                        help="also run our loop with each speed-up left out (" + ", ".join(LEVERS) + ")")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets, a few iterations: proves the bench still runs (the tests run it)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({"sizes": [32], "cutouts": 2, "steps": 1, "rounds": 1, "clip": "tiny-test", "vqgan": "tiny-test"})
    import logging

    logging.disable(logging.WARNING)  # open_clip warns that random weights are random
    print(f"# /imagine step: {args.vqgan} + {args.clip}, {args.cutouts} cutouts, {args.steps} timed steps, "
          f"{args.threads} threads, {platform.processor() or platform.machine()}")
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "sizes": {}}
    print(f"{'size':>6} {'loop':<21} {'s/step':>8} {'ratio':>6} {'cpu s':>7} {'cpu ratio':>9} {'peak MB':>8} "
          f"{'loop MB':>8}  same result")
    for size in args.sizes:
        rows: dict = {}
        for _ in range(args.rounds):
            levers = (REFERENCE_KEEP_MEMORY, *LEVERS) if args.levers else ()
            for kind in ("reference", "reference-frozen", "ours", *levers):
                row = _measure(kind, args, size)
                if kind in rows:
                    row["times"] += rows[kind]["times"]
                    row["peak_mb"] = max(row["peak_mb"], rows[kind]["peak_mb"])
                    row["loop_mb"] = max(row["loop_mb"], rows[kind]["loop_mb"])
                rows[kind] = row
        _print_rows(size, rows)
        report["sizes"][size] = rows
    snap = _first_snapshot(args, min(args.sizes))
    report["first_snapshot"] = snap
    print(f"job start -> first snapshot at {min(args.sizes)}^2: {snap['warm_s']:.2f} s warm "
          f"({snap['cold_s']:.2f} s with the models loading)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
