"""Latency of one /whatis classification, three ways, same model, image and labels; or, with
--label-matrix, how long the ImageNet label matrix takes to build, before and after trimming.

    python bench/whatis.py [--model tiny-test] [--iterations 200] [--concurrent 200] [--redis-db 12] [--json out.json]
    python bench/whatis.py --label-matrix [--model ViT-B-32:random] [--classes 1000] [--sweep 16,64,256]

1. direct          what the task does, called inline: blob get + decode_image + clip_for + classify
2. embedded        `await plugins.whatis.classify_image(engine, ...)` on the embedded engine
                   (Celery memory transport + in-process worker thread)
3. redis+worker    the same awaited call with Redis as broker/state and a real
                   `python -m bot.cli worker` subprocess (--pool solo, then --pool prefork,
                   the production default)

After its sequential calls, each engine path also fires --concurrent (default 200) requests at
once, each submitting and following its own job: all answered?, latency p50/p99, and how long
after its job finished each answer reached its requester (the follower's own lag).

Each path is warmed up first (model load, label-embedding cache) and timed with
time.perf_counter_ns; the engine paths report their p50 overhead over direct. For the engine
paths it also prints where the time goes, from the job records' timestamps. A benchmark
reports, it never fails: the exit code is 0 whatever the numbers (the Redis paths are
skipped, not failed, when Redis is unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.processes import LoggedProcess  # noqa: E402 (the tests' child-process helper)

GOAL_MS = 10.0
LABELS = ["cat", "dog", "person", "car", "tree", "house", "bird", "boat", "flower", "mountain"]


# ---- helpers ---------------------------------------------------------------------------
def make_image(width: int, height: int) -> bytes:
    """A deterministic, non-flat JPEG (gradients), the kind of upload chat clients send."""
    from PIL import Image

    r = Image.linear_gradient("L").resize((width, height))
    g = Image.radial_gradient("L").resize((width, height))
    b = Image.linear_gradient("L").rotate(90).resize((width, height))
    buf = io.BytesIO()
    Image.merge("RGB", (r, g, b)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def others_busy_percent(seconds: float = 1.0) -> float | None:
    """How busy the CPUs are (all of them, 0-100) over `seconds` while this process sleeps:
    other processes' load, which makes the numbers noisy. None where /proc/stat is missing."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def stats(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    p99_index = max(0, -(-99 * len(ms) // 100) - 1)  # nearest rank
    return {"p50_ms": statistics.median(ms), "p99_ms": ms[p99_index], "mean_ms": statistics.fmean(ms),
            "min_ms": ms[0], "max_ms": ms[-1], "n": len(ms)}


def make_settings(data_dir: Path, model: str, broker_url: str | None = None) -> Any:
    from bot.config import Settings

    return Settings(_env_file=None, data_dir=data_dir, clip_model=model, device="cpu", broker_url=broker_url,
                    log_level="WARNING")


async def timed(call: Callable[[], Awaitable[Any]], warmup: int, iterations: int) -> list[int]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        await call()
        samples.append(time.perf_counter_ns() - t0)
    return samples


class JobIds:
    """Records the job ids an engine submits (a thin wrapper around `engine.submit`), so the
    phases of each timed job can be read from its record afterwards, outside the timed region."""

    def __init__(self, engine: Any) -> None:
        self.ids: list[str] = []
        submit = engine.submit

        def recording_submit(*args: Any, **kwargs: Any) -> str:
            job_id = submit(*args, **kwargs)
            self.ids.append(job_id)
            return job_id

        engine.submit = recording_submit


def engine_path(engine: Any, image: bytes, warmup: int, iterations: int, top: int) -> tuple[list[int], dict]:
    """Time `classify_image` on `engine` and split the p50 into phases using the job records
    (wall clock, time.time, so cross-process on one machine is fine at ~µs precision)."""
    from plugins.whatis import classify_image

    ids = JobIds(engine)
    returned_at: dict[str, float] = {}

    async def call() -> None:
        # a fresh upload per request, as an adapter stores one: a task may delete its inputs
        await classify_image(engine, engine.blobs.put(image), LABELS, top)
        returned_at[ids.ids[-1]] = time.time()

    async def main() -> list[int]:
        return await timed(call, warmup, iterations)

    samples = asyncio.run(main())  # one event loop for warmup and every timed call
    phases: dict[str, list[float]] = {"submit->started": [], "started->finished": [], "finished->returned": []}
    for job_id in ids.ids[warmup:]:
        record = engine.book.get(job_id)
        if record is None or record.started_at is None or record.finished_at is None:
            continue
        phases["submit->started"].append((record.started_at - record.created_at) * 1e3)
        phases["started->finished"].append((record.finished_at - record.started_at) * 1e3)
        phases["finished->returned"].append((returned_at[job_id] - record.finished_at) * 1e3)
    breakdown = {name: statistics.median(v) for name, v in phases.items() if v}
    return samples, breakdown


def concurrent_path(engine: Any, image: bytes, concurrent: int, top: int) -> dict:
    """`concurrent` requests at once, each submitting and following its own job (what
    `engine.run` does): are all answered, how long each waited (p50/p99), and how long after its
    job finished each answer reached its requester (the follower's own lag)."""
    from plugins.whatis import TASK

    def submit() -> str:
        return engine.submit(TASK, {"image": engine.blobs.put(image), "labels": LABELS, "top": top}, queue="gpu")

    async def one() -> tuple[int, str, float]:
        t0 = time.perf_counter_ns()
        job_id = await asyncio.to_thread(submit)
        async for event in engine.follow(job_id):
            pass
        return time.perf_counter_ns() - t0, job_id, time.time()

    async def main() -> list[Any]:
        await one()  # warm: model, label cache, the loop's event reader
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(concurrent)), return_exceptions=True)
        return [results, time.perf_counter() - t0]

    results, wall = asyncio.run(main())
    answered = [r for r in results if not isinstance(r, BaseException)]
    lags = []
    for _, job_id, returned_at in answered:
        record = engine.book.get(job_id)
        if record is not None and record.finished_at is not None:
            lags.append(int((returned_at - record.finished_at) * 1e9))
    out = {"requests": concurrent, "answered": len(answered), "wall_s": wall,
           "errors": sorted({f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)})[:3]}
    if answered:
        out["latency"] = stats([r[0] for r in answered])
    if lags:
        out["finished_to_answered"] = stats(lags)
    return out


# ---- the three paths -------------------------------------------------------------------
def run_direct(settings: Any, image: bytes, warmup: int, iterations: int, top: int) -> list[int]:
    """Exactly the work of plugins/whatis/tasks.py::classify, inline, without the engine."""
    from engine.blobs import MemoryBlobStore
    from engine.images import decode_image
    from engine.models import clip_for
    from engine.models.clip import IMAGENET_CLASSNAMES
    from plugins.whatis import pipeline

    blobs = MemoryBlobStore(settings.blob_ttl)
    cache_dir = settings.data_dir / "cache" / "labels"

    async def call() -> None:
        key = blobs.put(image)
        picture = decode_image(blobs.get(key), max_bytes=settings.max_image_bytes,
                               max_pixels=settings.max_image_pixels)
        blobs.delete(key)
        clip = clip_for(settings)
        pipeline.classify(clip, picture, LABELS or IMAGENET_CLASSNAMES, top=top, cache_dir=cache_dir)

    async def main() -> list[int]:
        return await timed(call, warmup, iterations)

    return asyncio.run(main())


def run_embedded(settings: Any, image: bytes, warmup: int, iterations: int, top: int,
                 concurrent: int = 0) -> tuple[list[int], dict, dict | None]:
    from bot.app import open_app

    # The engine as `clipbot run` builds it (its tasks need the plugins' settings); the block stops its
    # worker thread, which polls the memory transport: it must not disturb the later paths.
    with open_app(settings) as app:
        samples, breakdown = engine_path(app.engine, image, warmup, iterations, top)
        return samples, breakdown, concurrent_path(app.engine, image, concurrent, top) if concurrent else None


class Worker(LoggedProcess):
    """`python -m bot.cli worker` as an operator runs it, in its own process group."""

    name, log_tail = "the worker", 4000

    def __init__(self, pool: str, data_dir: Path, broker_url: str, model: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPBOT_")}
        env.update({
            "CLIPBOT_BROKER_URL": broker_url, "CLIPBOT_CLIP_MODEL": model, "CLIPBOT_DEVICE": "cpu",
            "CLIPBOT_DATA_DIR": str(data_dir), "CLIPBOT_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1",
        })
        super().__init__([sys.executable, "-m", "bot.cli", "worker", "--pool", pool], data_dir / f"worker-{pool}.log",
                         env=env, cwd=ROOT)

    def wait_ready(self, engine: Any, timeout: float = 90.0) -> None:
        super().wait_ready(lambda: any(w.get("pid") == self.proc.pid for w in engine.live_workers("gpu")),
                           what="the worker to be ready", timeout=timeout)


def run_redis(pool: str, data_dir: Path, model: str, broker_url: str, image: bytes, warmup: int,
              iterations: int, top: int, concurrent: int = 0) -> tuple[list[int], dict, dict | None]:
    import redis

    from bot.app import open_app

    redis.Redis.from_url(broker_url).flushdb()  # stale worker announcements, queues, blobs
    settings = make_settings(data_dir, model, broker_url=broker_url)
    worker = Worker(pool, data_dir, broker_url, model)
    try:
        with open_app(settings, start_worker=False) as app:
            worker.wait_ready(app.engine)
            samples, breakdown = engine_path(app.engine, image, warmup, iterations, top)
            return samples, breakdown, concurrent_path(app.engine, image, concurrent, top) if concurrent else None
    finally:
        worker.stop()
        redis.Redis.from_url(broker_url).flushdb()  # leave no job records, events or blobs behind


# ---- label-matrix build: full context vs token prefixes ----------------------------------
def spread_classes(count: int) -> list[str]:
    """`count` ImageNet classes spread evenly over the 1000 (their prompt lengths are typical)."""
    from engine.models.clip import IMAGENET_CLASSNAMES

    count = max(1, min(count, len(IMAGENET_CLASSNAMES)))
    return [IMAGENET_CLASSNAMES[i * len(IMAGENET_CLASSNAMES) // count] for i in range(count)]


def build_seconds(clip: Any, labels: list[str], *, trimmed: bool, batch_size: int | None) -> tuple[float, Any]:
    """Seconds to build the label matrix for `labels` x the 80 templates, without any cache:
    trimmed = this code; not trimmed = the reference, every prompt at the full 77 tokens in
    fixed batches of 256, in order (what the code did before)."""
    from plugins.whatis import pipeline

    tower = clip.text_tower
    clip.text_tower = tower if trimmed else None
    real_encode = clip.encode_texts
    clip.encode_texts = lambda texts, progress=None: real_encode(texts, batch_size=batch_size, progress=progress)
    try:
        t0 = time.perf_counter()
        matrix = pipeline.encode_labels(clip, labels, pipeline.PROMPT_TEMPLATES)
        return time.perf_counter() - t0, matrix
    finally:
        clip.text_tower = tower
        del clip.encode_texts


def label_matrix_main(args: argparse.Namespace) -> int:
    import torch

    from engine.models.clip import load_clip, text_batch_size

    model = args.model or "ViT-B-32:random"
    clip = load_clip(model, device=args.device)
    subset = spread_classes(args.classes)
    batch = args.batch_size or text_batch_size(clip.device)
    print(f"label-matrix build · model {model} on {clip.device} · torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) · {os.cpu_count()} CPUs · Python {platform.python_version()}")
    print(f"{len(subset)} ImageNet classes spread over the 1000 × 80 templates = {len(subset) * 80} prompts, "
          f"in blocks of {args.block} classes, each built after (trimmed, batch {batch}) then before "
          f"(77 tokens, batch 256); text tower {'trimmable' if clip.text_tower is not None else 'NOT trimmable'}",
          flush=True)
    busy_before = others_busy_percent()
    build_seconds(clip, subset[:2], trimmed=True, batch_size=batch)  # warm-up (allocator, threads)

    # Interleaved blocks: load from other processes drifts over minutes and hits both alike.
    before = after = 0.0
    worst = 0.0
    for start in range(0, len(subset), args.block):
        block = subset[start : start + args.block]
        a, trimmed_matrix = build_seconds(clip, block, trimmed=True, batch_size=batch)
        b, full_matrix = build_seconds(clip, block, trimmed=False, batch_size=256)
        worst = max(worst, (trimmed_matrix - full_matrix).abs().max().item())
        after, before = after + a, before + b
        print(f"  classes {start + 1:>4}-{start + len(block):<4} after {a:7.2f} s · before {b:8.2f} s · "
              f"ratio {b / a:5.2f}x", flush=True)
    for size in args.sweep:
        seconds, _ = build_seconds(clip, subset[: args.block], trimmed=True, batch_size=size)
        print(f"  first block, trimmed, batch {size:<5} {seconds:7.2f} s", flush=True)

    scale = 1000 / len(subset)
    how = "measured" if len(subset) == 1000 else f"extrapolated x{scale:.3g} from {len(subset)} classes"
    print()
    print(f"max |difference| between the matrices: {worst:.2e}")
    print(f"ImageNet-1k label matrix ({how}): before {before * scale:,.0f} s · after {after * scale:,.0f} s · "
          f"ratio {before / after:.2f}x faster")
    if args.full_after and len(subset) < 1000:
        full, _ = build_seconds(clip, spread_classes(1000), trimmed=True, batch_size=batch)
        print(f"ImageNet-1k after, measured in full: {full:,.0f} s "
              f"(vs extrapolated before: {before * scale / full:.2f}x)")
    busy_after = others_busy_percent()
    for when, busy in (("before", busy_before), ("after", busy_after)):
        if busy is not None and busy > 10:
            print(f"note: other processes kept the CPUs {busy:.0f}% busy just {when} the run: expect noise")
    return 0


# ---- report ----------------------------------------------------------------------------
def report(results: dict[str, dict], breakdowns: dict[str, dict]) -> list[str]:
    direct = results["direct"]["p50_ms"]
    lines = [f"{'path':<28}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'overhead p50':>14}{'ratio':>8}"]
    for name, s in results.items():
        row = f"{name:<28}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['mean_ms']:>9.2f}"
        if not name.startswith("direct"):
            s["overhead_p50_ms"] = s["p50_ms"] - direct
            s["ratio_p50"] = s["p50_ms"] / direct
            row += f"{s['overhead_p50_ms']:>11.2f} ms{s['ratio_p50']:>7.2f}x"
        lines.append(row)
    if breakdowns:
        lines += ["", "where an engine call's time goes (p50 of each phase, ms, from the job records):",
                  f"{'path':<28}{'submit->started':>17}{'started->finished':>19}{'finished->returned':>20}"]
        for name, b in breakdowns.items():
            lines.append(f"{name:<28}" + "".join(
                f"{b.get(k, float('nan')):>{w}.2f}"
                for k, w in (("submit->started", 17), ("started->finished", 19), ("finished->returned", 20))))
    return lines


def concurrency_report(concurrency: dict[str, dict | None]) -> list[str]:
    rows = {name: c for name, c in concurrency.items() if c}
    if not rows:
        return []
    n = next(iter(rows.values()))["requests"]
    lines = ["", f"{n} requests at once (each submits and follows its own job; ms):",
             f"{'path':<28}{'answered':>9}{'wall s':>8}{'latency p50':>13}{'p99':>9}{'finish->answer p50':>20}{'p99':>9}"]
    for name, c in rows.items():
        lat, lag = c.get("latency", {}), c.get("finished_to_answered", {})
        lines.append(f"{name:<28}{c['answered']:>5}/{c['requests']:<3}{c['wall_s']:>8.2f}"
                     f"{lat.get('p50_ms', float('nan')):>13.1f}{lat.get('p99_ms', float('nan')):>9.1f}"
                     f"{lag.get('p50_ms', float('nan')):>20.2f}{lag.get('p99_ms', float('nan')):>9.2f}")
        for error in c["errors"]:
            lines.append(f"    error: {error}")
    return lines


def goal_word(name: str, results: dict[str, dict]) -> str:
    if name not in results:
        return "skipped"
    overhead = results[name]["overhead_p50_ms"]
    return f"{overhead:.2f} ms ({'PASS' if overhead <= GOAL_MS else 'FAIL'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="CLIP spec (default: the seeded tiny-test preset)")
    parser.add_argument("--iterations", type=int, default=200, help="timed calls per path (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per path first (default 20)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--image-size", default="640x480", help="WxH of the generated JPEG (default 640x480)")
    parser.add_argument("--redis-host", default="127.0.0.1:6379")
    parser.add_argument("--redis-db", type=int, default=12, help="Redis db to use; it is FLUSHED (default 12)")
    parser.add_argument("--pools", default="solo,prefork",
                        help="worker pools to measure, comma-separated (default solo,prefork; '' skips Redis)")
    parser.add_argument("--concurrent", type=int, default=200,
                        help="requests fired at once per engine path after the sequential ones (default 200; 0 skips)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    matrix = parser.add_argument_group("label-matrix mode: ImageNet label-matrix build time, 77 tokens vs trimmed")
    matrix.add_argument("--label-matrix", action="store_true", help="run this mode instead (model default ViT-B-32:random)")
    matrix.add_argument("--classes", type=int, default=1000, help="ImageNet classes to build, spread evenly (default 1000)")
    matrix.add_argument("--block", type=int, default=10, help="classes per interleaved block (default 10)")
    matrix.add_argument("--full-after", action="store_true", help="also time the trimmed build on all 1000 classes")
    matrix.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    matrix.add_argument("--batch-size", type=int, help="texts per batch for the trimmed build (default: per device)")
    matrix.add_argument("--sweep", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                        help="also time the trimmed build at these batch sizes, e.g. 16,64,256")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets, a few iterations: proves the bench still runs (the tests run it)")
    args = parser.parse_args(argv)
    if args.smoke:
        vars(args).update({"iterations": 3, "warmup": 1, "concurrent": 4, "model": "tiny-test"})
    if args.label_matrix:
        logging.basicConfig(level=logging.ERROR)
        return label_matrix_main(args)
    args.model = args.model or "tiny-test"

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("celery", "kombu", "amqp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    width, height = (int(v) for v in args.image_size.lower().split("x"))
    image = make_image(width, height)
    top = min(args.top, len(LABELS))
    broker_url = f"redis://{args.redis_host}/{args.redis_db}"
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]

    import torch

    print(f"model {args.model} · image {width}x{height} JPEG ({len(image) / 1024:.0f} KiB) · {len(LABELS)} labels, "
          f"top {top} · warmup {args.warmup} · {args.iterations} timed calls per path")
    print(f"{platform.machine()} {os.cpu_count()} CPUs · torch {torch.__version__} "
          f"({torch.get_num_threads()} threads) · Python {platform.python_version()}", flush=True)
    busy_before = others_busy_percent()

    results: dict[str, dict] = {}
    breakdowns: dict[str, dict] = {}
    concurrency: dict[str, dict | None] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="clipbot-bench-") as tmp:
        data_dir = Path(tmp)
        settings = make_settings(data_dir, args.model)
        t = time.monotonic()
        results["direct"] = stats(run_direct(settings, image, args.warmup, args.iterations, top))
        print(f"  direct done ({time.monotonic() - t:.1f} s)", flush=True)

        t = time.monotonic()
        samples, breakdowns["embedded"], concurrency["embedded"] = run_embedded(
            settings, image, args.warmup, args.iterations, top, args.concurrent)
        results["embedded"] = stats(samples)
        print(f"  embedded done ({time.monotonic() - t:.1f} s)", flush=True)

        if pools:
            try:
                import redis

                redis.Redis.from_url(broker_url, socket_connect_timeout=2).ping()
            except Exception as exc:  # no Redis here: report what we can
                notes.append(f"redis+worker skipped: {broker_url} unreachable ({type(exc).__name__}: {exc})")
                pools = []
        for pool in pools:
            name = f"redis+worker ({pool})"
            t = time.monotonic()
            try:
                samples, breakdowns[name], concurrency[name] = run_redis(
                    pool, data_dir, args.model, broker_url, image, args.warmup, args.iterations, top,
                    args.concurrent)
                results[name] = stats(samples)
                print(f"  {name} done ({time.monotonic() - t:.1f} s)", flush=True)
            except Exception as exc:
                notes.append(f"{name} failed: {type(exc).__name__}: {exc}")

        t = time.monotonic()
        # The same direct run once more: how far the machine drifted while the engine paths ran.
        results["direct (again, at the end)"] = stats(
            run_direct(settings, image, args.warmup, args.iterations, top))
        print(f"  direct again done ({time.monotonic() - t:.1f} s)", flush=True)

    busy_after = others_busy_percent()
    spiky = [name for name, r in results.items() if r["p99_ms"] > 5 * r["p50_ms"]]
    if spiky:
        notes.append(f"p99 > 5x p50 for {', '.join(spiky)}: usually another process took a core and torch's "
                     "threads waited for it (CPU contention), not the engine")
    for when, busy in (("before", busy_before), ("after", busy_after)):
        if busy is not None and busy > 10:
            notes.append(f"other processes kept the CPUs {busy:.0f}% busy just {when} the run: expect noisy "
                         "numbers (compare the two direct rows; run again on a quiet machine)")
    print()
    print("\n".join(report(results, breakdowns)))
    print("\n".join(concurrency_report(concurrency)))
    for note in notes:
        print(f"note: {note}")
    print(f"goal: engine overhead <= {GOAL_MS:.0f} ms p50 over direct: embedded {goal_word('embedded', results)}, "
          f"redis+worker {goal_word('redis+worker (solo)', results)}")
    if "redis+worker (prefork)" in results:
        print("      (extra) redis+worker with --pool prefork, the production default: "
              f"{goal_word('redis+worker (prefork)', results)}")

    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "image": f"{width}x{height} JPEG", "labels": len(LABELS), "top": top,
            "warmup": args.warmup, "iterations": args.iterations, "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "others_busy_percent": {"before": busy_before, "after": busy_after},
            "goal_overhead_p50_ms": GOAL_MS, "paths": results, "phase_p50_ms": breakdowns, "notes": notes,
            "concurrent": {k: v for k, v in concurrency.items() if v},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
