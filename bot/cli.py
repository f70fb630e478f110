"""The `clipbot` command: run | worker | whatis | models | plugins.

User mistakes (bad file, bad option, offline, no worker) exit with code 2 and one line on
stderr; nothing prints a traceback unless --verbose is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from engine.errors import UserError

EXIT_USER_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="clipbot", description="CLIP for your team's chat.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more, show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start the bot (default: local chat in this terminal)")
    run.add_argument("--adapter", choices=["local"], default=None,
                     help="force the local chat (default: every configured platform, else the local chat)")

    worker = sub.add_parser("worker", help="run a worker for the Redis engine (needs CLIPBOT_BROKER_URL)")
    worker.add_argument("--queues", help="comma-separated queues (default: CLIPBOT_WORKER_QUEUES)")
    worker.add_argument("--concurrency", type=int, help="child processes (default: CLIPBOT_WORKER_CONCURRENCY)")
    worker.add_argument("--pool", choices=["prefork", "solo", "threads"], default="prefork")

    whatis = sub.add_parser("whatis", help="classify an image (CLIP zero-shot)")
    whatis.add_argument("image", help="path to an image file")
    whatis.add_argument("--labels", help='comma-separated labels, e.g. "cat, dog, person" (default: ImageNet-1k)')
    whatis.add_argument("--top", type=int, help="how many labels to return")
    whatis.add_argument("--json", action="store_true", help='print {"model": ..., "labels": [...]} as JSON')

    models = sub.add_parser("models", help="list or download model weights")
    models_sub = models.add_subparsers(dest="action", required=True, parser_class=_Parser)
    models_sub.add_parser("list", help="show the configured model and the offline presets")
    pull = models_sub.add_parser("pull", help="download and verify the configured weights")
    pull.add_argument("--clip", help="CLIP spec to pull (default: CLIPBOT_CLIP_MODEL)")

    sub.add_parser("plugins", help="list the loaded plugins and their commands")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings()
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else getattr(logging, settings.log_level.upper(), logging.INFO)
            if args.command in ("run", "worker") else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return _COMMANDS[args.command](args, settings)
    except UserError as exc:
        print(f"clipbot: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.verbose:
            raise
        print(f"clipbot: internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
              file=sys.stderr)
        return 1


def _settings() -> Any:
    from pydantic import ValidationError

    from bot.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "CLIPBOT_" + str(first["loc"][0]).upper() if first.get("loc") else "a setting"
        raise UserError(f"invalid setting {field}: {first['msg']}") from None


@contextmanager
def app(settings: Any, *, start_worker: bool = True) -> Iterator[Any]:
    """Plugins, engine and dispatcher for these settings; the embedded worker runs inside."""
    from bot.dispatch import Dispatcher
    from bot.plugins import build_plugin_manager
    from engine.app import create_engine

    engine = create_engine(settings)
    dispatcher = Dispatcher(build_plugin_manager(settings), engine, settings)
    if engine.embedded and start_worker:
        engine.start_embedded(dispatcher.task_modules())
    try:
        yield dispatcher
    finally:
        engine.stop()


# Chat platforms `clipbot run` serves: each module has `configured(settings) -> bool` and
# `async serve(app, settings, stop_event)`; all configured ones run side by side.
PLATFORM_ADAPTERS = ("bot.adapters.slack", "bot.adapters.discord")


def _configured_platforms(settings: Any) -> list[Any]:
    import importlib

    found = []
    for name in PLATFORM_ADAPTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # adapter not part of this build
                continue
            raise UserError(f"{name.rsplit('.', 1)[-1]} support needs a package: {exc.name} "
                            "(pip install 'clipbot[all]')") from None
        if module.configured(settings):
            found.append(module)
    return found


async def _serve_platforms(dispatcher: Any, settings: Any, platforms: list[Any]) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(module.serve(dispatcher, settings, stop)) for module in platforms]
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()  # one platform failed (or all stopped): stop the others too
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise failure


def _run(args: argparse.Namespace, settings: Any) -> int:
    from bot.adapters.local import LocalAdapter

    platforms = [] if args.adapter == "local" else _configured_platforms(settings)
    with app(settings) as dispatcher:
        if platforms:
            asyncio.run(_serve_platforms(dispatcher, settings, platforms))
        else:
            asyncio.run(LocalAdapter(dispatcher).repl())
    return 0


def _worker(args: argparse.Namespace, settings: Any) -> int:
    from engine.worker import run_worker

    if settings.embedded:
        raise UserError("`clipbot worker` needs CLIPBOT_BROKER_URL (e.g. redis://localhost:6379/0); "
                        "without it, `clipbot run` runs everything in one process.")
    queues = [q.strip() for q in args.queues.split(",")] if args.queues else settings.worker_queues
    with app(settings, start_worker=False) as dispatcher:
        return run_worker(dispatcher.engine, dispatcher.task_modules(), queues=queues,
                          concurrency=args.concurrency or settings.worker_concurrency, pool=args.pool,
                          loglevel="DEBUG" if args.verbose else settings.log_level)


def _whatis(args: argparse.Namespace, settings: Any) -> int:
    from engine.images import read_image_file
    from plugins.whatis import classify_image, format_answer
    from plugins.whatis.labels import parse_labels

    data, _ = read_image_file(args.image, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    labels = parse_labels(args.labels, max_labels=settings.whatis_max_labels) if args.labels is not None else None
    top = args.top if args.top is not None else settings.whatis_top
    if labels is not None:
        top = min(top, len(labels))
    with app(settings) as dispatcher:
        key = dispatcher.engine.blobs.put(data)
        result = asyncio.run(classify_image(dispatcher.engine, key, labels, top))
    if args.json:
        print(json.dumps({"model": result["model"], "labels": result["labels"]}))
    else:
        print(format_answer(result, "your labels" if labels else "ImageNet-1k", settings.whatis_threshold)[0])
    return 0


def _models(args: argparse.Namespace, settings: Any) -> int:
    from engine.models.clip import parse_clip_spec, pull_clip
    from engine.models.presets import PRESETS

    if args.action == "list":
        print(f"configured CLIP: {settings.clip_model} (cache: {settings.models_dir})")
        for name, about in PRESETS.items():
            print(f"preset {name}: {about}")
        return 0
    spec = args.clip or settings.clip_model
    parse_clip_spec(spec)  # a bad spec is a user error before any network
    path = pull_clip(spec, cache_dir=settings.models_dir, progress=sys.stderr.isatty())
    print(f"{spec}: ready" + (f" at {path}" if path else " (preset: nothing to download)"))
    return 0


def _plugins(args: argparse.Namespace, settings: Any) -> int:
    from bot.plugins import build_plugin_manager

    pm = build_plugin_manager(settings)
    for impl in pm.hook.clipbot_commands.get_hookimpls():
        names = " ".join(f"/{spec.name}" for spec in impl.function() or ())
        print(f"{impl.plugin_name}: {names or '(no commands)'}")
    for name, why in pm.clipbot_errors.items():
        print(f"{name}: NOT LOADED ({why})")
    return 0


_COMMANDS = {"run": _run, "worker": _worker, "whatis": _whatis, "models": _models, "plugins": _plugins}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
