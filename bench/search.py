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
from dataclasses import dataclass
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


# What pictures carry as words: made-up words (syllables) whose frequencies follow a Zipf-Mandelbrot
# law, p(rank) ~ 1/(rank + 10), as word frequencies in text do (the offset flattens the head, where
# a language's stop words would be: the most common word is in ~1 picture in 6, the 1000th in ~1
# in 300, the 15,000th in ~1 in 5000). Most photos have no words on them; screenshots and
# slides have lines of them.
VOCABULARY = 20_000
OCR_SHARE, OCR_WORDS = 0.6, 18  # pictures with words read on them, and the median count when they have some
MESSAGE_SHARE, MESSAGE_WORDS = 0.5, 7  # messages with text, and their median length in words
_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


@dataclass
class Texts:
    """The synthetic text rows of a dataset: per picture its OCR text, per occurrence its message
    text and file name; each query's words; how many rows each query word is in."""

    ocr: list[str]
    message: list[str]
    file_name: list[str]
    queries: list[list[str]]
    rows_with: dict[str, int]

    def words(self, i: int) -> str:
        """Occurrence i's searchable words, as the index makes them."""
        from engine.index.text import searchable

        return searchable(self.ocr[i], self.message[i], self.file_name[i])


def vocabulary(rng: np.random.Generator) -> np.ndarray:
    from engine.index.text import STOP_WORDS

    seen: dict[str, None] = {}
    while len(seen) < VOCABULARY:
        word = "".join(rng.choice(_SYLLABLES, int(rng.integers(1, 4))))
        if word not in STOP_WORDS:
            seen.setdefault(word)
    return np.array(list(seen), dtype=object)


def make_texts(n: int, queries: int) -> Texts:
    rng = np.random.default_rng(13)
    vocab = vocabulary(rng)
    p = 1 / (np.arange(1, VOCABULARY + 1) + 10.0)
    p /= p.sum()
    ocr_len = np.where(rng.random(n) < OCR_SHARE, np.clip(np.rint(rng.lognormal(np.log(OCR_WORDS), 0.9, n)), 1, 400), 0)
    msg_len = np.where(rng.random(n) < MESSAGE_SHARE, np.clip(np.rint(rng.lognormal(np.log(MESSAGE_WORDS), 0.7, n)), 1, 60), 0)
    named = np.arange(n) % 3 == 2  # a third of the files are named with two words ("budget-review.png")
    lengths = (ocr_len + msg_len + 2 * named).astype(np.int64)
    ids = rng.choice(VOCABULARY, int(lengths.sum()), p=p)
    ends = np.cumsum(lengths)
    ocr, message, file_name = [], [], []
    for i in range(n):
        words = vocab[ids[ends[i] - lengths[i]:ends[i]]]
        a, b = int(ocr_len[i]), int(ocr_len[i] + msg_len[i])
        ocr.append("\n".join(" ".join(words[j:j + 6]) for j in range(0, a, 6)))
        message.append(" ".join(words[a:b]).capitalize())
        file_name.append(f"{words[b]}-{words[b + 1]}.png" if named[i] else
                         f"IMG_{i % 10_000:04d}.jpg" if i % 3 == 0 else f"Screenshot 2024-05-{1 + i % 28:02d} at 10.{i % 60:02d}.png")
    pairs = np.sort(np.repeat(np.arange(n, dtype=np.int64), lengths) * VOCABULARY + ids)  # (row, word)
    distinct = pairs[np.r_[True, pairs[1:] != pairs[:-1]]]
    rows_with = np.bincount(distinct % VOCABULARY, minlength=VOCABULARY)
    # a query: one word drawn as words are used (often a common one) and one or two drawn from the
    # whole vocabulary (mostly rare ones)
    asked = [[vocab[rng.choice(VOCABULARY, p=p)], *vocab[rng.integers(0, VOCABULARY, int(rng.integers(1, 3)))]]
             for _ in range(queries)]
    index_of = {w: i for i, w in enumerate(vocab)}
    return Texts(ocr, message, file_name, [list(dict.fromkeys(q)) for q in asked],
                 {w: int(rows_with[index_of[w]]) for q in asked for w in q})


def describe_texts(text: Texts) -> str:
    n = len(text.ocr)
    with_ocr = [len(t.split()) for t in text.ocr if t]
    counts = np.array(list(text.rows_with.values()))
    return (f"text rows: {len(with_ocr) / n:.0%} of pictures with OCR words (median {int(np.median(with_ocr))} words), "
            f"{sum(1 for m in text.message if m) / n:.0%} of messages with text; query words are in rows: "
            f"p50 {int(np.median(counts))}, p90 {int(np.percentile(counts, 90))}, max {counts.max()} "
            f"({counts.max() / n:.1%} of the index)")


# ---- loading ------------------------------------------------------------------------------------
def occurrence(i: int, text: "Texts") -> Occurrence:
    return Occurrence(SPACE, channel_of(i), f"m{i}", f"h{i}", posted_at=float(i), message_text=text.message[i],
                      file_name=text.file_name[i])


def load_embedded(root: Path, data: np.ndarray, text: "Texts") -> object:
    from engine.index.embedded import EmbeddedIndex

    index = EmbeddedIndex(root)
    chunk = 20_000
    for start in range(0, len(data), chunk):
        rows = range(start, min(len(data), start + chunk))
        index.add(SPACE, MODEL, {f"h{i}": (data[i], None) for i in rows}, [occurrence(i, text) for i in rows],
                  texts={f"h{i}": text.ocr[i] for i in rows})
    return index


def load_pgvector(url: str, data: np.ndarray, text: "Texts", workers: int,
                  ef_construction: int | None = None) -> tuple[object, float, float]:
    """The rows COPYed in, then the GIN and HNSW indexes built (as a restore would): (index, GIN
    build s, HNSW build s). Each occurrence's `words` tsvector is written as a literal made here
    from the same `searchable` words the index makes; a sample is checked against the server's own
    `to_tsvector('simple', ...)` afterwards."""
    from pgvector import HalfVector

    from engine.index.pgvector import HNSW_EF_CONSTRUCTION, HNSW_M, PgVectorIndex

    ef_construction = ef_construction or HNSW_EF_CONSTRUCTION

    index = PgVectorIndex(url)
    conn = index._conn
    with conn.cursor() as cur:
        cur.execute("TRUNCATE clipbot_embeddings, clipbot_occurrences, clipbot_thumbnails, clipbot_picture_texts")
        cur.execute(f"DROP INDEX IF EXISTS clipbot_embeddings_hnsw_{DIM}")
        cur.execute("DROP INDEX IF EXISTS clipbot_occurrences_words")
        with cur.copy("COPY clipbot_embeddings (space, hash, model, dim, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["text", "text", "text", "int4", "halfvec"])
            for i, v in enumerate(data):
                copy.write_row([SPACE, f"h{i}", MODEL, DIM, HalfVector(v)])
        with cur.copy("COPY clipbot_picture_texts (space, hash, text) FROM STDIN") as copy:
            for i, ocr in enumerate(text.ocr):
                copy.write_row([SPACE, f"h{i}", ocr])
        with cur.copy("COPY clipbot_occurrences (space, channel, message_id, hash, posted_at, message_text, file_name, "
                      "words) FROM STDIN") as copy:
            for i in range(len(data)):
                copy.write_row([SPACE, channel_of(i), f"m{i}", f"h{i}", float(i), text.message[i], text.file_name[i],
                                tsvector_literal(text.words(i))])
        check_tsvectors(cur, text)
        cur.execute("ANALYZE clipbot_embeddings")
        cur.execute("ANALYZE clipbot_occurrences")
        cur.execute("SET maintenance_work_mem = '6GB'")
        cur.execute(f"SET max_parallel_maintenance_workers = {workers}")
        started = time.perf_counter()
        cur.execute("CREATE INDEX clipbot_occurrences_words ON clipbot_occurrences USING gin (words)")
        gin = time.perf_counter() - started
        started = time.perf_counter()
        cur.execute(f"CREATE INDEX clipbot_embeddings_hnsw_{DIM} ON clipbot_embeddings USING hnsw "
                    f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (m = {HNSW_M}, "
                    f"ef_construction = {ef_construction}) WHERE dim = {DIM}")
        build = time.perf_counter() - started
    index._dims.add(DIM)
    return index, gin, build


def loaded_pgvector(url: str, n: int) -> object | None:
    """The index at `url` when it already holds this bench's n rows (a 1M build takes a quarter
    of an hour: measure it again without rebuilding), else None."""
    from engine.index.pgvector import PgVectorIndex

    index = PgVectorIndex(url)
    with index._conn.cursor() as cur:
        cur.execute("SELECT count(*), max(posted_at) FROM clipbot_occurrences WHERE space = %s", (SPACE,))
        count, last = cur.fetchone()
    if count != n or last != float(n - 1):
        index.close()
        return None
    index._dims.add(DIM)
    return index


def tsvector_literal(words: str) -> str:
    """What `to_tsvector('simple', words)` makes of `searchable` words, as tsvector input:
    each word with its 1-based positions (at most 256 kept, as PostgreSQL keeps)."""
    positions: dict[str, list[str]] = {}
    for at, word in enumerate(words.split(), start=1):
        positions.setdefault(word, []).append(str(at))
    return " ".join(f"'{w}':{','.join(p[:256])}" for w, p in positions.items())


def check_tsvectors(cur: object, text: "Texts", sample: int = 200) -> None:
    """Some COPYed rows' tsvectors equal what the index itself writes (`PgVectorIndex._store_words`)."""
    rows = np.random.default_rng(11).choice(len(text.ocr), min(sample, len(text.ocr)), replace=False)
    for i in rows:
        cur.execute("SELECT words = to_tsvector('simple', %s) FROM clipbot_occurrences WHERE space = %s AND "
                    "message_id = %s", (text.words(int(i)), SPACE, f"m{i}"))
        if not cur.fetchone()[0]:
            raise SystemExit(f"bench bug: the COPYed tsvector of m{i} differs from to_tsvector('simple', ...)")


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


TOP = 10  # /search's default page (CLIPBOT_SEARCH_TOP)
FUSED_GOALS = {(100_000, "embedded"): 20.0, (1_000_000, "pgvector"): 30.0}  # p99 ms of a /search with words


def measure_fused(index: object, queries: np.ndarray, text: Texts, *, filtered: bool, warmup: int = 20) -> dict:
    """p50/p99 ms of what a /search costs past the query's encoding (`plugins.search.pipeline.search`,
    a page of TOP, near-duplicates collapsed as configured by default) without words (CLIP only)
    and with them (fused with the full-text ranking), and of the two index calls fusing makes.
    The four are timed one after the other for each query, so drift hits them alike."""
    from plugins.search import SearchSettings, pipeline
    from plugins.search.ranking import FUSION_DEPTH

    duplicate = SearchSettings.model_fields["duplicate_cosine"].default
    calls = {
        "clip only": lambda q, words, where: pipeline.search(index, MODEL, SPACE, q, where, k=TOP, offset=0,
                                                             duplicate_cosine=duplicate),
        "fused": lambda q, words, where: pipeline.search(index, MODEL, SPACE, q, where, k=TOP, offset=0, words=words,
                                                         duplicate_cosine=duplicate),
        "search": lambda q, words, where: index.search(SPACE, MODEL, q, where, k=FUSION_DEPTH),
        "text_search": lambda q, words, where: index.text_search(SPACE, MODEL, words, where, k=FUSION_DEPTH),
    }
    times: dict[str, list[float]] = {name: [] for name in calls}
    for j, q in enumerate(queries):
        where = Filter(channels=frozenset({channel_of(j)})) if filtered else Filter()
        for name, call in calls.items():
            started = time.perf_counter()
            call(q, text.queries[j], where)
            if j >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: (float(np.percentile(t, 50)), float(np.percentile(t, 99))) for name, t in times.items()}


def print_fused(n: int, backend: str, filtered: bool, m: dict) -> None:
    from plugins.search.ranking import FUSION_DEPTH

    where = "1 of 20" if filtered else "none"
    (c50, c99), (f50, f99) = m["clip only"], m["fused"]
    rows = [("search", f"index.search k={FUSION_DEPTH}"), ("text_search", f"index.text_search k={FUSION_DEPTH}"),
            ("clip only", f"/search clip only (pipeline.search k={TOP}, near-duplicates collapsed)"),
            ("fused", f"/search fused (words + CLIP): {f50 / c50:.2f}x clip only at p50, {f99 / c99:.2f}x at p99")]
    for key, label in rows:
        p50, p99 = m[key]
        print(f"{n:>8} {backend:>15} {where:>8} {p50:>8.2f} {p99:>8.2f}  {label}", flush=True)


def fused_goals(fused: dict) -> None:
    """One line per size and backend the issue sets a goal for (p99 of the fused /search)."""
    for (n, backend), goal in FUSED_GOALS.items():
        if (n, backend) in fused:
            worst = max(m["fused"][1] for m in fused[(n, backend)].values())
            shown = ", ".join(f"{'1 of 20' if f else 'none'} {m['fused'][1]:.1f} ms" for f, m in fused[(n, backend)].items())
            size = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
            print(f"goal: fused /search p99 <= {goal:.0f} ms at {size} {backend}: {shown} "
                  f"({'PASS' if worst <= goal else 'MISS'})")


def query_part(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="clipbot-bench-"))
    server = None
    try:
        if "pgvector" in args.backends and not args.pg_url:
            import pgserver

            server = pgserver.get_server(work / "pg", cleanup_mode="delete")
        print(f"query latency, embedded scan on {args.threads} torch thread(s), load average "
              f"{os.getloadavg()[0]:.1f} before")
        print(f"{'size':>8} {'backend':>15} {'filter':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}  load")
        fused: dict[tuple[int, str], dict] = {}
        for n in args.sizes:
            data, queries = dataset(n, args.queries + 20)
            text = make_texts(n, len(queries))
            print(f"{n:>8} {describe_texts(text)}", flush=True)
            for backend in args.backends:
                started = time.perf_counter()
                if backend == "embedded":
                    index, note = load_embedded(work / f"emb-{n}", data, text), ""
                elif args.pg_reuse and (reused := loaded_pgvector(args.pg_url, n)) is not None:
                    index, note = reused, " (loaded before: --pg-reuse)"
                else:
                    index, gin, build = load_pgvector(args.pg_url or server.get_uri(), data, text, args.workers,
                                                      args.ef_construction)
                    note = f", GIN build {gin:.0f} s, HNSW build {build:.0f} s"
                load = time.perf_counter() - started
                product_ef = getattr(index, "ef_search", 0)
                if backend == "pgvector":  # a serving database has its index in cache: read it once first
                    for j, q in enumerate(queries[: args.queries]):
                        index.search(SPACE, MODEL, q, Filter(), k=10)
                        index.text_search(SPACE, MODEL, text.queries[j], Filter(), k=10)
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
                if not args.skip_fused:
                    if product_ef:
                        index.ef_search = product_ef
                    fused[(n, backend)] = {f: measure_fused(index, queries, text, filtered=f) for f in (False, True)}
                    for filtered, m in fused[(n, backend)].items():
                        print_fused(n, backend + (f" ef={product_ef}" if product_ef else ""), filtered, m)
                index.close()
                shutil.rmtree(work / f"emb-{n}", ignore_errors=True)
        fused_goals(fused)
        print(f"load average {os.getloadavg()[0]:.1f} after the queries")
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
    parser.add_argument("--pg-reuse", action="store_true",
                        help="with --pg-url: measure the rows a previous run of the same size loaded there")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="parallel HNSW build workers")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--skip-fused", action="store_true", help="no /search with words (CLIP + full text)")
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
