"""The `clipbot` command: run | worker | models | plugins, and one verb per chat command.

The chat commands' verbs are generated from their `CommandSpec`s and go through dispatch like
a message from any platform: `clipbot whatis photo.jpg --labels "cat, dog" --json` is the
`/whatis` handler's answer, its structured `data` printed as JSON. Every plugin, third-party
ones included, gets its verb this way.

User mistakes (bad file, bad option, offline, no worker) exit with code 2 and one line on
stderr; nothing prints a traceback unless --verbose is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from engine.datadir import PRIVATE_UMASK, make_dir, make_private, write_file
from engine.errors import UserError

EXIT_USER_ERROR = 2
FIXED_VERBS = ("run", "worker", "models", "plugins")
GENERIC_FLAGS = ("json", "out", "space", "channel", "user", "platform")
log = logging.getLogger("clipbot.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser(specs: list[Any]) -> argparse.ArgumentParser:
    parser = _Parser(prog="clipbot", description="CLIP for your team's chat.")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more, show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="start the bot: Discord/Slack when their tokens are set, else local chat")
    run.add_argument("--adapter", choices=["auto", "local", "discord", "slack"], default="auto",
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
            _add_command_verb(sub, spec)
    return parser


def _add_command_verb(sub: Any, spec: Any) -> None:
    """`clipbot NAME` from a CommandSpec: the first required option is positional (or, when none is
    required, the first free-text option: `clipbot search QUERY`), and also a flag; the rest are
    flags. Values stay text for dispatch to convert, except numbers (argparse checks them)."""
    from bot.commands import Attachment

    verb = sub.add_parser(spec.name, help=spec.description, description=spec.description)
    positional = next((o for o in spec.options if o.required), None) or next(
        (o for o in spec.options if o.type is str and not o.choices and not o.multiple
         and o.name not in GENERIC_FLAGS), None)
    for option in spec.options:
        if option.name in GENERIC_FLAGS:
            continue  # the generic flag of the same name wins; the option stays reachable by chat
        if option.multiple:
            _add_multiple(verb, option)
            continue
        kwargs: dict[str, Any] = {"help": option.description or None}
        if option.choices:
            kwargs["choices"] = list(option.choices)
        if option.type in (int, float):
            kwargs["type"] = option.type
        if option.type is Attachment:
            kwargs["metavar"] = "PATH"
        if option.type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        flag = f"--{option.name.replace('_', '-')}"
        if option is positional:
            # Positional, or the flag of the same name: `clipbot hello Ada` = `clipbot hello --name Ada`.
            # Dispatch says what is missing, as it does for chat.
            plain = {k: v for k, v in kwargs.items() if k != "action"}
            verb.add_argument(f"opt_{option.name}", nargs="?", default=argparse.SUPPRESS,
                              **{**plain, "metavar": option.name.upper()})
            verb.add_argument(flag, dest=f"opt_{option.name}", default=argparse.SUPPRESS, **plain)
        else:
            verb.add_argument(flag, dest=f"opt_{option.name}", **kwargs)
    verb.add_argument("--json", action="store_true", help="print the answer's structured data as JSON")
    verb.add_argument("--out", type=Path, help="folder for the images in the answer (default: DATA_DIR/output)")
    verb.add_argument("--space", default="local", help="space (Discord guild, Slack team) the request is in")
    verb.add_argument("--channel", action="append", default=[],
                      help="channel of the request (repeat: every one given is readable; none: no restriction)")
    verb.add_argument("--user", default="cli", help="user id the request comes from")
    verb.add_argument("--platform", default="local", help="platform whose data the request addresses")
    verb.set_defaults(spec_name=spec.name)


def _add_multiple(verb: Any, option: Any) -> None:
    """A list option: files are trailing positionals (`clipbot index add ... a.png b.png`),
    anything else a repeatable flag."""
    from bot.commands import Attachment

    if option.type is Attachment:
        verb.add_argument(f"opt_{option.name}", nargs="*", metavar=option.name.upper(),
                          help=option.description or None)
        verb.set_defaults(trailing_files=f"opt_{option.name}")
    else:
        verb.add_argument(f"--{option.name.replace('_', '-')}", dest=f"opt_{option.name}", action="append",
                          help=option.description or None)


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
            return _command(args, settings)
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


def _settings() -> Any:
    from pydantic import ValidationError

    from bot.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = "CLIPBOT_" + str(first["loc"][0]).upper() if first.get("loc") else "a setting"
        raise UserError(f"invalid setting {field}: {first['msg']}") from None


def _command_specs(settings: Any) -> list[Any]:
    """The commands the loaded plugins serve, without building an engine (cheap, no torch)."""
    from bot.plugins import build_plugin_manager

    return [spec for specs in build_plugin_manager(settings).hook.clipbot_commands() for spec in specs or ()]


def _configure_logging(args: argparse.Namespace, settings: Any) -> None:
    """Services log to stderr; the local chat and one-shot verbs keep library chatter (Celery,
    open_clip) out of the conversation: full logs go to DATA_DIR/logs/clipbot.log."""
    level = logging.DEBUG if args.verbose else getattr(logging, settings.log_level.upper(), logging.INFO)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
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


# ---- generic command verbs ----------------------------------------------------------------------
def _command(args: argparse.Namespace, settings: Any) -> int:
    from bot.app import open_app

    with open_app(settings) as app:
        request = _request(app, app.spec(args.spec_name), args)
        return asyncio.run(_answer_with_history(app, request, args, settings))


async def _answer_with_history(app: Any, request: Any, args: argparse.Namespace, settings: Any) -> int:
    """`_answer`, with the platform's message history reachable over its Web API when a command
    (`clipbot index backfill --platform discord ...`) walks it; nothing connects unless one does."""
    async with contextlib.AsyncExitStack() as stack:
        if args.platform in _PLATFORM_ADAPTERS:
            app.history_sources[args.platform] = _ShellHistory(stack, args.platform, app, settings)
        return await _answer(app, request, args)


class _ShellHistory:
    """A platform's `HistorySource` from the shell: logs in (REST only) on first use, closes at exit."""

    def __init__(self, stack: contextlib.AsyncExitStack, platform: str, app: Any, settings: Any) -> None:
        self._stack, self._platform, self._app, self._settings = stack, platform, app, settings
        self._source: Any = None

    async def history(self, space_id: str, channel_id: str, cursor: str | None, limit: int) -> Any:
        if self._source is None:
            module = _adapter_module(self._platform)
            self._source = await self._stack.enter_async_context(module.open_history(self._app, self._settings))
        return await self._source.history(space_id, channel_id, cursor, limit)


def _request(app: Any, spec: Any, args: argparse.Namespace) -> Any:
    from bot.commands import Attachment, Request

    options: dict[str, Any] = {}
    for option in spec.options:
        value = getattr(args, f"opt_{option.name}", None)
        if value is None:
            continue
        if option.type is Attachment:
            value = [_attach(app, v) for v in value] if option.multiple else _attach(app, value)
        options[option.name] = value
    channels = list(dict.fromkeys(args.channel))
    return Request(
        command=spec.name, options=options, user_id=args.user, user_name=args.user,
        channel_id=channels[0] if channels else "cli", platform=args.platform, is_admin=True,
        space_id=args.space, readable_channels=frozenset(channels) if channels else None,
        private_scopes=frozenset(channels),  # the operator: every private thread of those channels too
    )


def _attach(app: Any, path: str) -> Any:
    from bot.intake import ImageLimits, file_attachment

    return file_attachment(app.engine.blobs, path, limits=ImageLimits.of(app.settings))


async def _answer(app: Any, request: Any, args: argparse.Namespace) -> int:
    """Stream the replies: progress to stderr, text (or the final data as JSON) to stdout."""
    from bot.markup import render_plain

    out_dir = Path(args.out) if args.out else Path(app.settings.data_dir) / "output"
    written: dict[str, str] = {}
    final = None
    async for reply in app.handle(request):
        for image in reply.images:
            written[image.filename] = str(_write_image(out_dir, image))
        if reply.final:
            final = reply
        text = render_plain(reply.text)
        if reply.error:
            print(f"clipbot: {' '.join(text.split())}", file=sys.stderr)
            return 1 if (reply.data or {}).get("error") == "internal" else EXIT_USER_ERROR
        if reply.progress is not None and not reply.final:
            from bot.adapters.local import progress_line

            print(progress_line(reply.progress, text), file=sys.stderr, flush=True)
        elif not args.json:
            if text:
                print(text)
            for image in reply.images:
                print(f"[image saved: {written[image.filename]}]")
            for action in reply.actions:
                from bot.adapters.local import action_command

                print(f"[{action.label}] {action_command(action)}")
    if args.json:
        print(json.dumps(_with_paths((final.data if final else None) or {}, written)))
    return 0


def _write_image(out_dir: Path, image: Any) -> Path:
    make_dir(out_dir)
    return write_file(out_dir / Path(image.filename).name, image.data)


def _with_paths(value: Any, written: dict[str, str]) -> Any:
    """The data with every string that names an image written here replaced by its path."""
    if isinstance(value, str):
        return written.get(value, value)
    if isinstance(value, list):
        return [_with_paths(v, written) for v in value]
    if isinstance(value, dict):
        return {k: _with_paths(v, written) for k, v in value.items()}
    return value


# ---- fixed verbs ----------------------------------------------------------------------------------
_PLATFORM_ADAPTERS = {"discord": "bot.adapters.discord", "slack": "bot.adapters.slack"}


def _adapter_module(name: str) -> Any:
    """The adapter module for platform `name`; a UserError when its packages are not installed."""
    import importlib

    try:
        return importlib.import_module(_PLATFORM_ADAPTERS[name])
    except ModuleNotFoundError as exc:
        raise UserError(f"the {name} adapter is not available ({exc}); install clipbot[{name}]") from None


def _platform_adapters(args: argparse.Namespace, settings: Any) -> list[Any]:
    """Adapter modules to serve: the one asked for, or (auto) every configured one."""
    wanted = list(_PLATFORM_ADAPTERS) if args.adapter == "auto" else (
        [] if args.adapter == "local" else [args.adapter])
    modules = []
    for name in wanted:
        try:
            module = _adapter_module(name)
        except UserError:
            if args.adapter == name:
                raise
            continue
        if module.configured(settings):
            modules.append(module)
        elif args.adapter == name:
            raise UserError(f"the {name} adapter is not configured: see README, section {name.title()}")
    return modules


def _run(args: argparse.Namespace, settings: Any) -> int:
    from bot.app import open_app

    adapters = _platform_adapters(args, settings)
    with open_app(settings) as app:
        if adapters:
            asyncio.run(_serve(app, settings, adapters))
        else:
            from bot.adapters.local import LocalAdapter

            print(f"(logs: {Path(settings.data_dir) / 'logs' / 'clipbot.log'})", file=sys.stderr)
            asyncio.run(LocalAdapter(app).repl())
    return 0


async def _serve(app: Any, settings: Any, adapters: list[Any]) -> None:
    """Every configured platform adapter, concurrently, until one stops or Ctrl-C."""
    import signal

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # a clean shutdown: adapters close their connections
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(module.serve(app, settings, stop), name=module.__name__) for module in adapters]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # an adapter that crashed says why
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _worker(args: argparse.Namespace, settings: Any) -> int:
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


def _models(args: argparse.Namespace, settings: Any) -> int:
    from engine.models.clip import parse_clip_spec, pull_clip
    from engine.models.presets import PRESETS

    if args.action == "list":
        print(f"configured CLIP: {settings.clip_model} (cache: {settings.models_dir})")
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


def _pull_vqgan(spec: str, settings: Any) -> int:
    from engine.models.vqgan import parse_vqgan_spec, pull_vqgan

    parse_vqgan_spec(spec)  # a bad spec is a user error before any network
    paths = pull_vqgan(spec, cache_dir=settings.models_dir, progress=sys.stderr.isatty())
    where = f" at {paths[1]}" if paths else " (random weights: nothing to download)"
    print(f"VQGAN {spec}: ready{where}")
    return 0


def _prepare(app: Any, *, at_worker_start: bool) -> None:
    """Run the plugins' `clipbot_prepare` hooks, their progress lines going to stderr (pull)
    or the log (worker)."""
    log = logging.getLogger("clipbot.prepare")
    report = log.info if at_worker_start else (lambda message: print(message, file=sys.stderr, flush=True))
    app.pm.hook.clipbot_prepare(app=app, at_worker_start=at_worker_start, report=report)


def _plugins(args: argparse.Namespace, settings: Any) -> int:
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
