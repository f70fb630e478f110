"""Run hostile pictures through every path that decodes a user's image and feeds a model, under an
address-space ceiling: `python -m tests.probes.image_bounds_probe DATA_DIR MODEL_CONFIG HEADROOM_MB
PICTURE...`. Prints one JSON object: per picture and path, the user-facing message (or "ok").

Every path is exercised once on an ordinary picture first (model, threads, caches, malloc arenas),
then the process's own address space is measured and RLIMIT_AS set to it plus HEADROOM_MB, so the
ceiling is "this much more than what ordinary work needed", whatever torch's baseline is here.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import uuid
from pathlib import Path

from PIL import Image

from bot.markup import render_plain
from bot.testing import TestBot
from plugins.imagine import QUEUE as IMAGINE_QUEUE
from plugins.imagine import TASK as IMAGINE
from plugins.search import INDEX_NOW, QUERY
from plugins.whatis import TASK as WHATIS


def _vm_size_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize in /proc/self/status")


def _paths(bot: TestBot, path: Path) -> dict[str, str]:
    """The user-facing outcome of `path` through each path: "ok" or the message."""
    data = path.read_bytes()
    engine = bot.app.engine
    out: dict[str, str] = {}

    def worker(name: str, task: str, kwargs: dict, queue: str = "gpu", check=None) -> None:
        try:
            result = asyncio.run(engine.run(task, kwargs, queue=queue))
            out[name] = check(result) if check else "ok"
        except Exception as exc:  # the message a chat user would read
            out[name] = f"{type(exc).__name__}: {exc}"

    # What the local chat (and the CLI) does with a file: intake, then the whatis job.
    reply = bot.ask(f"/whatis {path} labels: cat, dog")
    out["chat whatis"] = render_plain(reply.text) if reply.error else "ok"
    # What a worker does with bytes already stored (posted in a channel, sent by any client).
    worker("whatis job", WHATIS, {"image": engine.blobs.put(data), "labels": ["cat", "dog"], "top": 2})
    item = {"space_id": "local", "channel_id": "general", "message_id": uuid.uuid4().hex, "key": engine.blobs.put(data)}
    worker("index job", INDEX_NOW, {"items": [item]},
           check=lambda r: "ok" if not r["skipped"] else f"skipped {r['skipped']} of {r['batch']}")
    worker("search by example", QUERY, {"space": "local", "k": 3, "image": engine.blobs.put(data)})
    worker("imagine init", IMAGINE, {"prompt": "a boat", "seed": 1, "width": 32, "height": 32, "steps": 1,
                                     "every": 1, "drawer": "pixels", "init": engine.blobs.put(data)},
           queue=IMAGINE_QUEUE)
    return out


def main(data_dir: str, model_config: str, headroom_mb: str, *pictures: str) -> None:
    with TestBot(data_dir=data_dir, clip_model=f"{model_config}:random", vqgan_model="tiny-test",
                 channel_id="general") as bot:
        ordinary = Path(data_dir) / "ordinary.png"
        Image.new("RGB", (300, 200), (200, 40, 40)).save(ordinary)
        for _ in range(2):  # the second round allocates nothing new
            warm = _paths(bot, ordinary)
        assert all(v == "ok" for v in warm.values()), warm
        baseline = _vm_size_bytes()
        ceiling = baseline + int(headroom_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        results = {Path(p).name: _paths(bot, Path(p)) for p in pictures}
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"results": results, "baseline_mb": baseline >> 20, "ceiling_mb": ceiling >> 20,
                      "peak_rss_mb_before": rss_before >> 10, "peak_rss_mb_after": rss_after >> 10}))


if __name__ == "__main__":
    main(*sys.argv[1:])
