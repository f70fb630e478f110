"""The `clipbot` command: the process commands run | worker | models | plugins, and the argument
plumbing. Every other verb is a chat command answered by the shell surface (`bot.adapters.shell`);
`clipbot run` serves the adapters of the registry (`bot.adapters.registry`).

User mistakes (bad file, bad option, offline, no worker) exit with code 2 and one line on
stderr; nothing prints a traceback unless --verbose is given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bot.adapters.shell import EXIT_USER_ERROR
from engine.datadir import PRIVATE_UMASK, make_dir, make_private
from engine.errors import UserError

if TYPE_CHECKING:
    from bot.adapters.base import Adapter, AdapterSettings
    from bot.app import App
    from bot.commands import CommandSpec
    from bot.config import Settings

    Serving = list[tuple[Adapter, AdapterSettings]]

FIXED_VERBS = ("run", "worker", "models", "plugins")
log = logging.getLogger("clipbot.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(specs: list["CommandSpec"]) -> argparse.ArgumentParser:
    from bot.adapters import shell
    from bot.adapters.registry import adapter_names

    parser = _Parser(prog="clipbot", description="CLIP for your team's chat.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more, show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start the bot: Discord/Slack when their tokens are set, else local chat")
    run.add_argument("--adapter", choices=["auto", *adapter_names()], default="auto",
                     help="chat platform to serve (auto: every configured platform, else the local chat)")

    worker = sub.add_parser("worker", help="run a worker for the Redis engine (needs CLIPBOT_BROKER_URL)")
    worker.add_argument("--queues", help="comma-separated queues (default: CLIPBOT_WORKER_QUEUES, else all)")
    worker.add_argument("--concurrency", type=int, help="child processes (default: CLIPBOT_WORKER_CONCURRENCY)")
    worker.add_argument("--pool", choices=["prefork", "solo", "threads"], default="prefork")

    models = sub.add_parser("models", help="list or download model weights")
    models_sub = models.add_subparsers(dest="action", required=True, parser_class=_Parser)
    models_sub.add_parser("list", help="show the configured model and the offline presets")
    pull = models_sub.add_parser("pull", help="download and verify the configured weights")
    pull.add_argument("--clip", help="CLIP spec to pull (default: CLIPBOT_CLIP_MODEL)")
    pull.add_argument("--vqgan", help="VQGAN spec to pull instead (e.g. imagenet_f16_16384; see CLIPBOT_VQGAN_MODEL)")
    pull.add_argument("--no-prepare", action="store_true",
                      help="only download: skip precomputing (e.g. /whatis's ImageNet label embeddings)")

    sub.add_parser("plugins", help="list the loaded plugins, their commands, settings and queues")
    for spec in specs:
        if spec.name not in FIXED_VERBS:
            shell.add_verb(sub, spec)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argparse stops filling positionals at the first flag (`index add --space S a.png`): file
    paths left over after the flags go to the verb's file list, anything else is an error."""
    args, extras = parser.parse_known_args(argv)
    files = getattr(args, "trailing_files", None)
    if extras and files and not any(e.startswith("-") for e in extras):
        setattr(args, files, list(getattr(args, files) or []) + extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    os.umask(PRIVATE_UMASK)  # the data folder is private (engine.datadir): so is all we write
    verbose = "--verbose" in raw or "-v" in raw
    try:
        settings = _settings()
        args = _parse(_parser(_command_specs(settings)), argv)
        _configure_logging(args, settings)
        if getattr(args, "spec_name", None):
            from bot.adapters.shell import answer_verb

            return answer_verb(args, settings)
        return _COMMANDS[args.command](args, settings)
    except UserError as exc:
        print(f"clipbot: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if verbose:
            raise
        print(f"clipbot: internal error: {type(exc).__name__}: {exc} (run with --verbose for details)",
              file=sys.stderr)
        return 1


def _settings() -> "Settings":
    from pydantic import ValidationError

    from bot.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "CLIPBOT_" + str(first["loc"][0]).upper() if first.get("loc") else "a setting"
        raise UserError(f"invalid setting {field}: {first['msg']}") from None


def _command_specs(settings: "Settings") -> list["CommandSpec"]:
    """The commands the loaded plugins serve, without building an engine (cheap, no torch)."""
    from bot.plugins import build_plugin_manager

    return [spec for specs in build_plugin_manager(settings).hook.clipbot_commands() for spec in specs or ()]


def _configure_logging(args: argparse.Namespace, settings: "Settings") -> None:
    """Services log to stderr; the local chat and one-shot verbs keep library chatter (Celery,
    open_clip) out of the conversation: full logs go to DATA_DIR/logs/clipbot.log. Lines are
    text, or JSON objects with CLIPBOT_LOG_FORMAT=json (`engine.observe.JsonFormatter`)."""
    from engine.observe import JsonFormatter

    level = logging.DEBUG if args.verbose else getattr(logging, settings.log_level.upper(), logging.INFO)
    fmt = (JsonFormatter() if settings.log_format == "json"
           else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(level)
    if args.command == "worker" or args.verbose or (args.command == "run" and _platform_adapters(args, settings)):
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        root.addHandler(console)
    if args.command in FIXED_VERBS[2:]:
        root.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
        return
    try:
        log_dir = make_dir(Path(settings.data_dir) / "logs")
        handler = logging.FileHandler(log_dir / "clipbot.log", encoding="utf-8")
        make_private(log_dir / "clipbot.log")
    except OSError:
        return  # a read-only data dir must not stop the bot; the console handler (if any) still logs
    handler.setFormatter(fmt)
    root.addHandler(handler)


# ---- process commands ---------------------------------------------------------------------------
def _platform_adapters(args: argparse.Namespace, settings: "Settings") -> "Serving":
    """(adapter, its settings) to serve beside each other: the one asked for, or (auto) every
    configured one. Empty: serve the default adapter (the local chat) alone."""
    from bot.adapters.registry import adapter_names, load_adapter, load_adapter_settings

    wanted = adapter_names() if args.adapter == "auto" else [args.adapter]
    serving = []
    for name in wanted:
        try:
            adapter = load_adapter(name)
        except Exception as exc:  # a broken third-party adapter does not stop the others
            if args.adapter == name:
                raise UserError(f"the {name} adapter could not be loaded ({type(exc).__name__}: {exc})") from None
            log.warning("adapter %s not loaded: %s: %s", name, type(exc).__name__, exc)
            continue
        if adapter.default:
            continue
        try:
            adapter.check_installed()
        except UserError:
            if args.adapter == name:
                raise
            continue
        adapter_settings = load_adapter_settings(adapter)
        if adapter.configured(adapter_settings):
            serving.append((adapter, adapter_settings))
        elif args.adapter == name:
            raise UserError(f"the {name} adapter is not configured: see README, section {name.title()}")
    return serving


def _default_adapter(args: argparse.Namespace) -> "Adapter":
    from bot.adapters.registry import adapter_names, load_adapter

    names = [args.adapter] if args.adapter != "auto" else adapter_names()
    return next(adapter for adapter in map(load_adapter, names) if adapter.default)


def _run(args: argparse.Namespace, settings: "Settings") -> int:
    from contextlib import nullcontext

    from bot.adapters.registry import load_adapter_settings
    from bot.app import open_app
    from engine.observe import serve_client

    adapters = _platform_adapters(args, settings)
    # A service (Discord, Slack) must serve its endpoints; the local chat serves them if it can.
    with open_app(settings) as app, serve_client(app.engine, required=bool(adapters)) or nullcontext():
        if adapters:
            asyncio.run(_serve(app, adapters))
        else:
            chat = _default_adapter(args)
            asyncio.run(chat.serve(app, load_adapter_settings(chat), asyncio.Event()))
    return 0


async def _serve(app: "App", adapters: "Serving") -> None:
    """Every configured platform adapter, concurrently, until one stops or Ctrl-C."""
    import signal

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a clean shutdown: adapters close their connections
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(adapter.serve(app, adapter_settings, stop), name=adapter.name)
             for adapter, adapter_settings in adapters]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # an adapter that crashed says why
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _worker(args: argparse.Namespace, settings: "Settings") -> int:
    from bot.app import open_app
    from engine.worker import run_worker

    if settings.embedded:
        raise UserError("`clipbot worker` needs CLIPBOT_BROKER_URL (e.g. redis://localhost:6379/0); "
                        "without it, `clipbot run` runs everything in one process.")
    with open_app(settings, start_worker=False) as app:
        declared = list(app.engine.queues)
        asked = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else settings.worker_queues
        unknown = [q for q in asked if q not in declared]
        if unknown:
            raise UserError(f"unknown queue {unknown[0]!r}; the plugins declare: {', '.join(declared)}")
        return run_worker(app.engine, app.task_modules(), queues=asked or declared,
                          concurrency=args.concurrency or settings.worker_concurrency, pool=args.pool,
                          loglevel="DEBUG" if args.verbose else settings.log_level,
                          prepare=lambda: _prepare(app, at_worker_start=True))


def _models(args: argparse.Namespace, settings: "Settings") -> int:
    from engine.models.clip import backend_status, parse_clip_spec, pull_clip
    from engine.models.presets import PRESETS

    if args.action == "list":
        print(f"configured CLIP: {settings.clip_model} (cache: {settings.models_dir})")
        backend, why = backend_status(settings.clip_model, device=settings.device, cache_dir=settings.models_dir,
                                      backend=settings.clip_backend)
        print(f"CLIP backend: {backend} ({why})")
        print(f"configured VQGAN: {settings.vqgan_model}")
        for name, about in PRESETS.items():
            print(f"preset {name}: {about}")
        return 0
    if args.vqgan:
        return _pull_vqgan(args.vqgan, settings)
    spec = args.clip or settings.clip_model
    parse_clip_spec(spec)  # a bad spec is a user error before any network
    path = pull_clip(spec, cache_dir=settings.models_dir, progress=sys.stderr.isatty())
    print(f"{spec}: weights " + (f"at {path}" if path else "built in (nothing to download)"), flush=True)
    if args.no_prepare:
        return 0
    from bot.app import open_app

    # Prepared here, into this machine's data dir (no broker needed: nothing is queued).
    local = settings.model_copy(update={"clip_model": spec, "broker_url": None, "redis_url": None})
    with open_app(local, start_worker=False) as app:
        _prepare(app, at_worker_start=False)
    print(f"{spec}: ready")
    return 0


def _pull_vqgan(spec: str, settings: "Settings") -> int:
    from engine.models.vqgan import parse_vqgan_spec, pull_vqgan

    parse_vqgan_spec(spec)  # a bad spec is a user error before any network
    paths = pull_vqgan(spec, cache_dir=settings.models_dir, progress=sys.stderr.isatty())
    where = f" at {paths[1]}" if paths else " (random weights: nothing to download)"
    print(f"VQGAN {spec}: ready{where}")
    return 0


def _prepare(app: "App", *, at_worker_start: bool) -> None:
    """Run the plugins' `clipbot_prepare` hooks, their progress lines going to stderr (pull)
    or the log (worker)."""
    log = logging.getLogger("clipbot.prepare")
    report = log.info if at_worker_start else (lambda message: print(message, file=sys.stderr, flush=True))
    app.pm.hook.clipbot_prepare(app=app, at_worker_start=at_worker_start, report=report)


def _plugins(args: argparse.Namespace, settings: "Settings") -> int:
    from bot.config import env_prefix
    from bot.plugins import build_plugin_manager, declared_queues, plugin_settings

    pm = build_plugin_manager(settings)
    for impl in pm.hook.clipbot_commands.get_hookimpls():
        names = " ".join(f"/{spec.name}" for spec in impl.function() or ())
        print(f"{impl.plugin_name}: {names or '(no commands)'}")
    for name, why in pm.clipbot_errors.items():
        print(f"{name}: NOT LOADED ({why})")
    for name, values in plugin_settings(pm).items():
        for field, info in type(values).model_fields.items():
            print(f"setting {env_prefix(name)}{field.upper()}={getattr(values, field)!s}  ({info.description})")
    for queue in declared_queues(pm).values():
        print(f"queue {queue.name}: {queue.description}")
    return 0


_COMMANDS = {"run": _run, "worker": _worker, "models": _models, "plugins": _plugins}

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
