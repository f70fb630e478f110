"""What clipbot's long-running processes tell operators: Prometheus metrics, health and JSON logs.

Every long-running process (`clipbot run`, `clipbot worker`) serves, on CLIPBOT_OBSERVE_HOST and
CLIPBOT_OBSERVE_PORT (9108 for the bot, 9109 for a worker, 0: off):
- `GET /metrics`: Prometheus text; every name starts with `clipbot_` (`Metrics` lists them);
- `GET /healthz`: 200 while the process lives;
- `GET /readyz`: 200 when it can do its work (Redis answers; a worker consumes and its processes
  have prepared), else 503 with a JSON reason. Probes call it with urllib, which raises on 503.

A worker's prefork children count jobs in prometheus_client's multiprocess mode: the worker
points PROMETHEUS_MULTIPROC_DIR at a private temporary folder before any metric exists
(`use_multiprocess_dir`), children write their own files there, the parent's /metrics merges
them, and a child that exits has its live gauges dropped (`forget_process`).

Logs: CLIPBOT_LOG_FORMAT=json writes one JSON object per line (`JsonFormatter`), with the id of
the job whose delivery wrote it (`job_scope`).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import glob
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from engine.app import Engine
    from engine.settings import EngineSettings

log = logging.getLogger(__name__)

__all__ = ["BOT_PORT", "WORKER_PORT", "JsonFormatter", "Metrics", "ObserveServer", "Readiness", "current_job",
           "engine_checks", "forget_process", "imagine_step", "job_scope", "metric_names", "metrics", "note_gpu_memory",
           "observe_address", "scrape_registry", "serve_client", "use_multiprocess_dir"]

BOT_PORT, WORKER_PORT = 9108, 9109
# Job outcomes as counted by clipbot_jobs_total: the three ends of a job, and a delivery not run
# (its job already ended or has no record).
OUTCOMES = ("succeeded", "failed", "cancelled", "refused")
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_STEP_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric clipbot records, created on `registry` (None: prometheus_client's default)."""

    def __init__(self, registry: "CollectorRegistry | None") -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        on = {"registry": registry}
        self.jobs = Counter("clipbot_jobs", "Job deliveries run by this worker, by task and outcome",
                            ["task", "outcome"], **on)
        self.submitted = Counter("clipbot_jobs_submitted", "Jobs submitted: queued, or refused (no worker online, "
                                 "Redis unreachable)", ["task", "outcome"], **on)
        self.queue_wait = Histogram("clipbot_job_queue_wait_seconds", "Seconds from submit to a worker starting "
                                    "the job's first attempt", ["task"], buckets=_SECONDS, **on)
        self.run_time = Histogram("clipbot_job_run_seconds", "Seconds a job attempt ran, by task and outcome",
                                  ["task", "outcome"], buckets=_SECONDS, **on)
        self.model_load = Histogram("clipbot_model_load_seconds", "Seconds to load a model into a process",
                                    ["kind"], buckets=_SECONDS, **on)
        self.imagine_steps = Counter("clipbot_imagine_steps", "/imagine optimisation steps run", **on)
        self.imagine_step = Histogram("clipbot_imagine_step_seconds", "Seconds one /imagine step took",
                                      buckets=_STEP_SECONDS, **on)
        self.index_images = Gauge("clipbot_index_images", "Pictures with an embedding in an image index "
                                  "space, as of its last stats query (/index stats)", ["space"],
                                  multiprocess_mode="mostrecent", **on)
        self.platform_errors = Counter("clipbot_platform_api_errors", "Discord/Slack API answers that were "
                                       "errors (HTTP status, or api_error for Slack's ok=false)",
                                       ["platform", "status"], **on)
        self.gpu_memory = Gauge("clipbot_gpu_memory_bytes", "CUDA memory of a worker process after its last job",
                                ["device", "kind"], multiprocess_mode="liveall", **on)
        self.prepared = Gauge("clipbot_worker_prepared", "Worker processes that finished preparing (models "
                              "loaded, caches built)", multiprocess_mode="livesum", **on)


_metrics: Metrics | None = None
_metrics_lock = threading.Lock()


def metrics() -> Metrics:
    """This process's metrics, created on first use (after `use_multiprocess_dir`, in a worker)."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            from prometheus_client import CollectorRegistry

            _metrics = Metrics(CollectorRegistry(auto_describe=True))
        return _metrics


def metric_names() -> set[str]:
    """The names of every series clipbot exposes (with _total, _bucket, _sum, _count), queue depth
    and readiness included: what a dashboard may query."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    Metrics(registry)
    names = {"clipbot_queue_depth", "clipbot_ready"}
    for family in registry.collect():
        kind = family.type
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(kind, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def note_gpu_memory() -> None:
    """Record this process's CUDA memory, if it already uses CUDA (never initialises it: a worker's
    parent must not touch CUDA before it forks)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    gauge = metrics().gpu_memory
    for index in range(torch.cuda.device_count()):
        gauge.labels(f"cuda:{index}", "allocated").set(torch.cuda.memory_allocated(index))
        gauge.labels(f"cuda:{index}", "reserved").set(torch.cuda.memory_reserved(index))


def imagine_step(seconds: float) -> None:
    """One /imagine optimisation step took `seconds`."""
    recorded = metrics()
    recorded.imagine_steps.inc()
    recorded.imagine_step.observe(seconds)


# ---- multiprocess mode (a worker's prefork children) -----------------------------------------
def use_multiprocess_dir() -> str:
    """Point prometheus_client's multiprocess mode at a fresh private folder, removed when this
    process exits; returns it. Call it before any metric exists in this process."""
    from prometheus_client import values

    if _metrics is not None:
        raise RuntimeError("use_multiprocess_dir must run before the first metric is created")
    path = tempfile.mkdtemp(prefix="clipbot-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()  # the class is chosen once at import; choose again
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    return path


def forget_process(pid: int) -> None:
    """A worker process exited: its live gauges (prepared, GPU memory) stop counting."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def processes_with_files() -> set[int]:
    """The pids that left live-gauge files in the multiprocess folder."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    found = glob.glob(os.path.join(path, "gauge_live*_*.db")) if path else []
    return {int(name.rsplit("_", 1)[1][:-3]) for name in found if name.rsplit("_", 1)[1][:-3].isdigit()}


def scrape_registry(collectors: Iterable[Any] = ()) -> "CollectorRegistry":
    """What /metrics serves: this process's metrics (or, in multiprocess mode, every process's
    files merged), plus `collectors` read at scrape time (queue depth, readiness)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        MultiProcessCollector(registry, path=path)
    else:
        registry.register(_Forward(metrics().registry))
    for collector in collectors:
        registry.register(collector)
    return registry


class _Forward:
    """This process's own registry, as one collector of a scrape registry."""

    def __init__(self, source: "CollectorRegistry | None") -> None:
        if source is None:
            raise ValueError("metrics() always has a registry of its own")
        self._source = source

    def collect(self) -> Iterator[Any]:
        yield from self._source.collect()


class QueueDepth:
    """`clipbot_queue_depth{queue}`: jobs waiting in each queue (`Engine.queue_depth`), read from
    Redis at scrape time."""

    def __init__(self, engine: "Engine", queues: Iterable[str]) -> None:
        self._engine, self._queues = engine, list(queues)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("clipbot_queue_depth", "Jobs waiting in each queue (read from Redis)",
                                   labels=["queue"])
        try:
            depths = {name: self._engine.queue_depth(name) for name in self._queues}
        except Exception as exc:  # Redis away: no depth this scrape, /readyz says why
            log.debug("queue depth not read: %s", exc)
            depths = {}
        for name, depth in depths.items():
            family.add_metric([name], depth or 0)
        yield family


# ---- readiness -----------------------------------------------------------------------------
Check = Callable[[], "str | None"]  # None: fine; else why the process is not ready


class Readiness:
    """Whether this process can do its work: every check passes. Also `clipbot_ready` (1 or 0)."""

    def __init__(self, checks: Iterable[Check]) -> None:
        self.checks = list(checks)

    def __call__(self) -> tuple[bool, str]:
        for check in self.checks:
            try:
                reason = check()
            except Exception as exc:  # a check that breaks says so instead of answering 500
                reason = f"{type(exc).__name__}: {exc}"
            if reason:
                return False, reason
        return True, "ready"

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("clipbot_ready", "1 when /readyz answers 200", value=1 if self()[0] else 0)


def redis_check(url: str) -> Check:
    """A check that Redis at `url` answers a PING within 2 s."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from engine.store import redis_where

    client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0))

    def check() -> str | None:
        try:
            client.ping()
        except redis.RedisError as exc:
            return f"Redis unreachable at {redis_where(client)}: {exc}"
        return None

    return check


def prepared_check(wanted: int) -> Check:
    """A check that `wanted` live worker processes reported `clipbot_worker_prepared`."""
    def check() -> str | None:
        have = _live_gauge_sum("clipbot_worker_prepared")
        return None if have >= wanted else f"{have:.0f} of {wanted} worker processes prepared"

    return check


def _live_gauge_sum(name: str) -> float:
    registry = scrape_registry()
    return sum(s.value for family in registry.collect() if family.name == name for s in family.samples)


def engine_checks(engine: "Engine") -> list[Check]:
    """What any process using `engine` needs: Redis (and a separate broker) answer; embedded, the
    in-process worker thread runs."""
    if engine.embedded:
        return [lambda: None if engine.live_workers() else "the embedded worker is not running"]
    settings = engine.settings
    return [redis_check(url) for url in dict.fromkeys([settings.state_redis_url, settings.broker_url]) if url]


def serve_client(engine: "Engine", *, required: bool = True) -> "ObserveServer | None":
    """The endpoints of a process that submits jobs (`clipbot run`), on CLIPBOT_OBSERVE_PORT
    (default 9108); None when it is 0. Ready: `engine_checks` pass. Not `required` (an
    interactive local chat, a second one on this host): a taken port is a warning, not an exit."""
    address = observe_address(engine.settings, BOT_PORT)
    if address is None:
        return None
    readiness = Readiness(engine_checks(engine))
    collectors: list[Any] = [readiness]
    if not engine.embedded:
        collectors.append(QueueDepth(engine, engine.queues))
    try:
        server = ObserveServer(*address, registry=scrape_registry(collectors), readiness=readiness)
    except Exception as exc:  # UserError: the port is taken
        if required:
            raise
        log.warning("%s", exc)
        return None
    return server.start()


# ---- the HTTP endpoints ------------------------------------------------------------------------
def observe_address(settings: "EngineSettings", default_port: int) -> tuple[str, int] | None:
    """(host, port) to serve on, or None when CLIPBOT_OBSERVE_PORT is 0."""
    port = default_port if settings.observe_port is None else settings.observe_port
    return (settings.observe_host, port) if port else None


class ObserveServer:
    """/metrics, /healthz and /readyz over HTTP on a daemon thread."""

    def __init__(self, host: str, port: int, *, registry: "CollectorRegistry",
                 readiness: Callable[[], tuple[bool, str]]) -> None:
        from engine.errors import UserError

        handler = type("Handler", (_Handler,), {"registry": registry, "readiness": staticmethod(readiness)})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UserError(f"can't serve metrics on {host}:{port} ({exc.strerror or exc}); set "
                            "CLIPBOT_OBSERVE_PORT to a free port, or 0 to turn the endpoints off") from None
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> "ObserveServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="clipbot-observe", daemon=True)
        self._thread.start()
        log.info("metrics and health on http://%s:%d (/metrics /healthz /readyz)", *self._server.server_address[:2])
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "ObserveServer":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close_inherited(self) -> None:
        """In a forked child: close the listening socket it inherited (its thread did not follow)."""
        self._server.socket.close()


class _Handler(BaseHTTPRequestHandler):
    registry: "CollectorRegistry"
    readiness: Callable[[], tuple[bool, str]]

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

            self._answer(200, generate_latest(self.registry), CONTENT_TYPE_PLAIN_0_0_4)
        elif path == "/healthz":
            self._answer(200, b'{"alive": true}\n', "application/json")
        elif path == "/readyz":
            ready, reason = self.readiness()
            body = json.dumps({"ready": ready, "reason": reason}).encode() + b"\n"
            self._answer(200 if ready else 503, body, "application/json")
        else:
            self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
        log.debug("%s " + format, self.address_string(), *args)


# ---- structured logs ---------------------------------------------------------------------------
_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("clipbot_job", default=None)


def current_job() -> str | None:
    """The id of the job this thread is running a delivery of, if any."""
    return _JOB.get()


@contextlib.contextmanager
def job_scope(job_id: str) -> Iterator[None]:
    """Log lines written inside carry `job_id` (`JsonFormatter`)."""
    token = _JOB.set(job_id)
    try:
        yield
    finally:
        _JOB.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, job_id when the
    line was written while running a job, exc when it carries a traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        job_id = getattr(record, "job_id", None) or current_job()
        if job_id:
            entry["job_id"] = job_id
        ref = getattr(record, "ref", None)
        if ref:
            entry["ref"] = ref
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
