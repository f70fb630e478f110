"""/search benchmark: query latency and recall per index backend, and indexing throughput.

Part 1, queries: for each size (default 10k, 100k; add 1000000 for 1M) fill each backend with the
same 512-d unit embeddings (clustered like CLIP's: 2000 centres + noise) posted in 20 channels,
then time `ImageIndex.search` for held-out queries: unfiltered and filtered to 1 channel of 20
(the permission filter inside the query). Recall@10 is measured against exact float32 search
over the same rows and filter, in the same run. pgvector is loaded with COPY BINARY and its
HNSW index built afterwards with parallel workers, with the product's m and ef_construction.

Part 2, indexing: N generated pictures go through the whole path (ImagePosted hook -> pending
queue -> drain job on the embedded engine -> decode, hash, preview, one CLIP call per batch ->
index) and, in the same run, straight through `ClipModel.encode_images` in the same batches
(model only, pictures already decoded). Reported as pictures/s and their ratio, once per CLIP
backend (--clip-backend torch,onnx: each against its own model-only rate). This part indexes
with OCR off, so it measures the CLIP path alone.

Part 3, OCR: generated slides (800x600, four lines of words in Pillow's built-in font, JPEG)
read by `engine.models.ocr` alone, on one thread and on the indexing pool's threads, with the
share of their words read back exactly; then the whole indexing path over the same slides
with OCR on versus off (the cost OCR adds to indexing).

    python3 bench/search.py                                   # 10k + 100k, both backends, indexing
    python3 bench/search.py --sizes 1000000 --backends embedded
    python3 bench/search.py --skip-queries --index-images 256 --model ViT-B-32:random
    python3 bench/search.py --skip-queries --skip-indexing --ocr-images 64

Goals (issue 7): p99 <= 20 ms at 100k embedded; <= 30 ms at 1M with recall@10 >= 0.95 on
pgvector; indexing >= 0.9x the model-only rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.index import Filter, Occurrence  # noqa: E402

DIM = 512
CHANNELS = 20
SPACE = "bench"
MODEL = "bench-model"


# ---- data ---------------------------------------------------------------------------------------
def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(centres), n)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        x = centres[picks[part]] + 0.6 * rng.standard_normal((part.stop - part.start, DIM)).astype(np.float32) / np.sqrt(DIM)
        out[part] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def dataset(n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((2000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return clustered(n, 1, centres), clustered(queries, 2, centres)


def channel_of(i: int) -> str:
    return f"c{i % CHANNELS}"


# ---- loading ------------------------------------------------------------------------------------
def load_embedded(root: Path, data: np.ndarray) -> object:
    from engine.index.embedded import EmbeddedIndex

    index = EmbeddedIndex(root)
    chunk = 20_000
    for start in range(0, len(data), chunk):
        rows = range(start, min(len(data), start + chunk))
        index.add(SPACE, MODEL, {f"h{i}": (data[i], None) for i in rows},
                  [Occurrence(SPACE, channel_of(i), f"m{i}", f"h{i}", posted_at=float(i)) for i in rows])
    return index


def load_pgvector(url: str, data: np.ndarray, workers: int, ef_construction: int | None = None) -> tuple[object, float]:
    from pgvector import HalfVector

    from engine.index.pgvector import HNSW_EF_CONSTRUCTION, HNSW_M, PgVectorIndex

    ef_construction = ef_construction or HNSW_EF_CONSTRUCTION

    index = PgVectorIndex(url)
    conn = index._conn
    with conn.cursor() as cur:
        cur.execute("TRUNCATE clipbot_embeddings, clipbot_occurrences, clipbot_thumbnails")
        cur.execute(f"DROP INDEX IF EXISTS clipbot_embeddings_hnsw_{DIM}")
        with cur.copy("COPY clipbot_embeddings (space, hash, model, dim, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "int4", "halfvec"])
            for i, v in enumerate(data):
                copy.write_row([SPACE, f"h{i}", MODEL, DIM, HalfVector(v)])
        with cur.copy("COPY clipbot_occurrences (space, channel, message_id, hash, posted_at) FROM STDIN "
                      "WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "text", "float8"])
            for i in range(len(data)):
                copy.write_row([SPACE, channel_of(i), f"m{i}", f"h{i}", float(i)])
        cur.execute("ANALYZE clipbot_embeddings")
        cur.execute("ANALYZE clipbot_occurrences")
        cur.execute("SET maintenance_work_mem = '6GB'")
        cur.execute(f"SET max_parallel_maintenance_workers = {workers}")
        started = time.perf_counter()
        cur.execute(f"CREATE INDEX clipbot_embeddings_hnsw_{DIM} ON clipbot_embeddings USING hnsw "
                    f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (m = {HNSW_M}, "
                    f"ef_construction = {ef_construction}) WHERE dim = {DIM}")
        build = time.perf_counter() - started
    index._dims.add(DIM)
    return index, build


# ---- measuring ----------------------------------------------------------------------------------
def exact_top(data: np.ndarray, q: np.ndarray, allowed: np.ndarray | None, k: int) -> set[str]:
    scores = data @ q
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return {f"m{i}" for i in top}


def measure(index: object, data: np.ndarray, queries: np.ndarray, *, filtered: bool, k: int = 10,
            warmup: int = 20) -> dict:
    ids = np.arange(len(data))
    times, found = [], []
    for j, q in enumerate(queries):  # searches back to back, as a serving worker runs them
        channel = channel_of(j) if filtered else None
        where = Filter(channels=frozenset({channel})) if filtered else Filter()
        started = time.perf_counter()
        hits = index.search(SPACE, MODEL, q, where, k=k)
        elapsed = time.perf_counter() - started
        if j < warmup:
            continue
        times.append(elapsed * 1000)
        found.append({h.occurrence.message_id for h in hits})
    # The exact answers afterwards: numpy's BLAS threads spin for a while after each call and would
    # take the cores from the next timed search.
    recalls = []
    for j, hits in enumerate(found, start=warmup):
        allowed = (ids % CHANNELS == j % CHANNELS) if filtered else None
        recalls.append(len(exact_top(data, queries[j], allowed, k) & hits) / k)
    return {"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
            "recall": float(np.mean(recalls))}


def scan_floor(data: np.ndarray, queries: np.ndarray) -> float:
    """p50 ms of the bare float16 scan the embedded backend does: its speed limit on this machine."""
    import torch

    matrix = torch.from_numpy(data.astype(np.float16))
    times = []
    for q in queries[:100]:
        started = time.perf_counter()
        (matrix @ torch.from_numpy(q.astype(np.float16))).float()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50))


def query_part(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="clipbot-bench-"))
    server = None
    try:
        if "pgvector" in args.backends and not args.pg_url:
            import pgserver

            server = pgserver.get_server(work / "pg", cleanup_mode="delete")
        print(f"query latency, embedded scan on {args.threads} torch thread(s)")
        print(f"{'size':>8} {'backend':>15} {'filter':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}  load")
        for n in args.sizes:
            data, queries = dataset(n, args.queries + 20)
            for backend in args.backends:
                started = time.perf_counter()
                if backend == "embedded":
                    index, note = load_embedded(work / f"emb-{n}", data), ""
                else:
                    index, build = load_pgvector(args.pg_url or server.get_uri(), data, args.workers,
                                                 args.ef_construction)
                    note = f", HNSW build {build:.0f} s"
                load = time.perf_counter() - started
                if backend == "pgvector":  # a serving database has its index in cache: read it once first
                    for q in queries[: args.queries]:
                        index.search(SPACE, MODEL, q, Filter(), k=10)
                for ef in (args.ef_search if backend == "pgvector" else [0]):
                    if ef:
                        index.ef_search = ef
                    name = f"{backend}" + (f" ef={ef}" if ef else "")
                    for filtered in (False, True):
                        m = measure(index, data, queries, filtered=filtered)
                        print(f"{n:>8} {name:>15} {'1 of 20' if filtered else 'none':>8} {m['p50']:>8.2f} "
                              f"{m['p99']:>8.2f} {m['recall']:>9.3f}  {load:.0f} s{note}", flush=True)
                if backend == "embedded":
                    print(f"{n:>8} {'floor':>15} {'none':>8} {scan_floor(data, queries):>8.2f}  (one bare float16 "
                          "matrix-vector product over the same rows, same run)", flush=True)
                index.close()
                shutil.rmtree(work / f"emb-{n}", ignore_errors=True)
    finally:
        if server is not None:
            server.cleanup()
        shutil.rmtree(work, ignore_errors=True)


# ---- indexing throughput -------------------------------------------------------------------------
def make_pictures(n: int, folder: Path) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(3)
    paths = []
    for i in range(n):
        base = rng.integers(0, 255, (240 // 8, 320 // 8, 3), dtype=np.uint8)
        picture = Image.fromarray(base).resize((320, 240), Image.Resampling.BILINEAR)
        path = folder / f"p{i}.jpg"
        picture.save(path, quality=90)
        paths.append(path)
    return paths


def indexing_part(args: argparse.Namespace) -> None:
    for backend in args.clip_backend:
        model_rate, path_rate, n, runs = indexing_rates(args.model, args.device, args.index_images, args.batch,
                                                        backend=backend, with_backend=True)
        print(f"indexing {n} pictures, {args.model} on {args.device}, CLIP backend {backend} "
              f"(runs {runs}), batches of {args.batch}: "
              f"model only {model_rate:.1f}/s, whole path {path_rate:.1f}/s, ratio {path_rate / model_rate:.2f}x")


def indexing_rates(model: str, device: str, images: int, batch: int, *, backend: str = "torch",
                   with_backend: bool = False, ocr: bool = False, slides: bool = False) -> tuple:
    """(model-only pictures/s, whole-path pictures/s, pictures[, the backend that ran]) for
    `images` generated pictures (noise, or `slides` with words on them): `encode_images` on
    decoded pictures, then the backfill path (hook -> queue -> drain -> index, reading text
    when `ocr`), on a fresh index."""
    from bot.app import open_app
    from bot.config import Settings
    from engine.models import clip_for

    work = Path(tempfile.mkdtemp(prefix="clipbot-bench-idx-"))
    try:
        paths = make_slides(images, work)[0] if slides else make_pictures(images, work)
        os.environ["CLIPBOT_SEARCH_BATCH_SIZE"] = str(batch)
        settings = Settings(_env_file=None, data_dir=work / "data", model_cache=work / "models", clip_model=model,
                            device=device, log_level="WARNING", clip_backend=backend, ocr=ocr)
        with open_app(settings) as app:
            clip = clip_for(settings)
            model_rate, path_rate = _indexing_rates(app, clip, paths, batch)
        rates = (model_rate, path_rate, len(paths))
        return (*rates, clip.backend) if with_backend else rates
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _indexing_rates(app: object, clip: object, paths: list[Path], batch: int) -> tuple[float, float]:
    """(model-only encode, whole indexing path) in pictures per second, one model, same pictures."""
    from bot.commands import Attachment
    from bot.events import ImagePosted
    from engine.images import decode_image

    warm = [decode_image(p.read_bytes()) for p in paths[:batch]]
    clip.encode_images(warm, batch_size=batch)  # load and warm the model once for both
    pictures = [decode_image(p.read_bytes()) for p in paths]
    started = time.perf_counter()
    clip.encode_images(pictures, batch_size=batch)
    model_rate = len(pictures) / (time.perf_counter() - started)

    blobs = [(p, app.engine.blobs.put(p.read_bytes())) for p in paths]
    before = asyncio.run(app.engine.run("search.stats", {"space": SPACE}, queue="gpu"))["embeddings"]
    started = time.perf_counter()
    for i, (path, key) in enumerate(blobs):
        event = ImagePosted("local", SPACE, "c1", f"m{i}-{id(clip)}", "u", time.time(), "",
                            (Attachment(key, path.name, "image/jpeg", path.stat().st_size),))
        asyncio.run(app.image_posted(event))
    queue = app.face.pending("search")
    while queue.size():
        time.sleep(0.005)
    stats = asyncio.run(app.engine.run("search.stats", {"space": SPACE}, queue="gpu"))
    path_rate = len(paths) / (time.perf_counter() - started)
    assert stats["embeddings"] == before + len(paths), stats
    return model_rate, path_rate


# ---- OCR ----------------------------------------------------------------------------------------------
_WORDS = ("roadmap budget review sprint design quarterly launch metrics customer onboarding kiwi mango "
          "release backlog hiring offsite revenue pipeline survey feedback latency storage").split()


def make_slides(n: int, folder: Path) -> tuple[list[Path], list[list[str]]]:
    """n slides with four lines of two or three words each, and the words on each."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(5)
    font = ImageFont.load_default(size=44)
    paths, words = [], []
    for i in range(n):
        picture = Image.new("RGB", (800, 600), tuple(int(c) for c in rng.integers(215, 255, 3)))
        draw = ImageDraw.Draw(picture)
        lines = [" ".join(rng.choice(_WORDS, int(rng.integers(2, 4)))) for _ in range(4)]
        for j, line in enumerate(lines):
            draw.text((50, 60 + j * 120), line.capitalize(), fill=(25, 25, 60), font=font)
        paths.append(folder / f"slide{i}.jpg")
        picture.save(paths[-1], quality=88)
        words.append(" ".join(lines).split())
    return paths, words


def ocr_part(args: argparse.Namespace) -> None:
    from engine.images import decode_image
    from engine.index.text import tokens
    from engine.models.ocr import get_ocr
    from plugins.search.pipeline import _pool

    work = Path(tempfile.mkdtemp(prefix="clipbot-bench-ocr-"))
    try:
        paths, words = make_slides(args.ocr_images, work)
        pictures = [decode_image(p.read_bytes()) for p in paths]
        reader = get_ocr(["en"])
        reader.read(pictures[0])  # load and warm once
        started = time.perf_counter()
        texts = [" ".join(line.text for line in reader.read(p)) for p in pictures]
        one = len(pictures) / (time.perf_counter() - started)
        pool = _pool()
        started = time.perf_counter()
        list(pool.map(reader.read, pictures))
        many = len(pictures) / (time.perf_counter() - started)
        read = sum(len(set(tokens(" ".join(w))) & set(tokens(t))) for w, t in zip(words, texts))
        total = sum(len(set(tokens(" ".join(w)))) for w in words)
        print(f"ocr {len(pictures)} slides 800x600: one thread {one:.1f}/s, {pool._max_workers} threads {many:.1f}/s, "
              f"words read back {read / total:.1%}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rates = {}
    for ocr in (True, False):
        rates[ocr] = indexing_rates(args.model, args.device, args.ocr_images, args.batch, ocr=ocr, slides=True)[1]
    print(f"indexing {args.ocr_images} slides, {args.model} on {args.device}: OCR on {rates[True]:.1f}/s vs off "
          f"{rates[False]:.1f}/s, ratio {rates[True] / rates[False]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--backends", default="embedded,pgvector", type=lambda s: s.split(","))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--pg-url", help="an existing PostgreSQL with pgvector (default: start one with pgserver)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel HNSW build workers")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--skip-indexing", action="store_true")
    parser.add_argument("--skip-ocr", action="store_true")
    parser.add_argument("--ocr-images", type=int, default=64, help="slides for the OCR part")
    parser.add_argument("--index-images", type=int, default=256)
    parser.add_argument("--model", default="ViT-B-32:random")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--clip-backend", default="torch,onnx", type=lambda s: s.split(","),
                        help="CLIP backends to index with, each measured against its own model-only rate "
                             "(CLIPBOT_CLIP_BACKEND values; default torch,onnx)")
    parser.add_argument("--threads", type=int,
                        help="torch threads for the embedded scan (default: a one-child worker's, engine.worker.torch_threads)")
    parser.add_argument("--ef-construction", type=int, help="HNSW build setting (default: the product's)")
    parser.add_argument("--ef-search", default="400", type=lambda s: [int(x) for x in s.split(",")],
                        help="pgvector hnsw.ef_search values to measure on one build (e.g. 100,200,400)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny presets, a few iterations: proves the bench still runs (the tests run it)")
    args = parser.parse_args()
    if args.smoke:
        vars(args).update({"sizes": [1000], "backends": ["embedded"], "queries": 20, "index_images": 8, "model": "tiny-test",
                           "ocr_images": 4})
    import torch

    if args.threads is None:
        from bot.config import Settings
        from engine.worker import torch_threads

        args.threads = torch_threads(Settings(_env_file=None), children=1)

    torch.set_num_threads(args.threads)
    if not args.skip_queries:
        query_part(args)
    if not args.skip_indexing:
        indexing_part(args)
    if not args.skip_ocr:
        ocr_part(args)


if __name__ == "__main__":
    main()
