"""deploy/compose.yml run as processes on this machine, as `docker compose up -d` would run it in
containers: where there is no Docker, the wiring of the compose file is still what is tested.

`plan_fleet(model, ...)` reads each service's command, environment (env_file, then `environment:`,
over its image's ENV) and healthcheck, interpolates `${VAR:-default}` from the test's .env, and
maps the containers' world onto this machine:

- service host names: the test's own Redis and PostgreSQL stand in for the `redis` and `postgres`
  services (their URLs rewritten; PostgreSQL's user, password and database checked against that
  service's own settings first), other services' names become 127.0.0.1 and their mapped port;
- ports: each port a service `expose`s gets a free port of its own here (rewritten in its
  environment, command and healthcheck), as every container has its own network;
- volumes: `NAME:/path` becomes a folder per volume, shared by the services that mount it.

It refuses (WiringError, before anything starts) what would break the fleet in containers too: a
host name that is no service, `localhost` meaning another container, a worker queue no plugin
declares or a declared queue no worker serves, processes disagreeing on Redis or the index, state
kept outside a volume, a worker that does not wait for the models pull. `Fleet` then starts the
services in dependency order, runs the one-shots to completion, and runs each healthcheck until it
passes, as compose's `depends_on` conditions do.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Fleet", "ServicePlan", "WiringError", "interpolate", "load_compose", "plan_fleet"]

_VAR = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<auth>[^@/\s'\"]*@)?(?P<host>[A-Za-z0-9_.-]+)"
                  r"(?::(?P<port>\d+))?(?P<path>/[^\s'\"]*)?")
_LOOPBACK = {"localhost", "127.0.0.1", "0.0.0.0"}
EXTERNAL = ("redis", "postgres")  # services the test brings up itself
_PATH_SETTINGS = ("CLIPBOT_DATA_DIR", "CLIPBOT_MODEL_CACHE")


class WiringError(AssertionError):
    """The compose file would not work as a fleet: says which service and why."""


@dataclass
class ServicePlan:
    name: str
    command: list[str]
    env: dict[str, str]
    healthcheck: list[str] | None
    depends_on: dict[str, str]
    one_shot: bool
    ports: dict[int, int] = field(default_factory=dict)  # container port -> port on this machine

    @property
    def clipbot(self) -> str | None:
        """`run`, `worker`, `models` for clipbot's processes, else None."""
        return self.command[1] if self.command[:1] == ["clipbot"] and len(self.command) > 1 else None


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error},
    $VAR, and $$ for a literal $ (left for the container's shell)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value
    return _VAR.sub(lambda m: _substitute(m, env), value)


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    name = match.group("braced") or match.group("bare")
    op, arg, value = match.group("op"), match.group("arg") or "", env.get(name)
    unset = value is None or (value == "" and op is not None and op.startswith(":"))
    if op and op.endswith("-"):
        return arg if unset else value
    if op and op.endswith("?"):
        if unset:
            raise WiringError(f"required variable {name} is missing a value: {arg}")
        return value
    return value or ""


def _as_dict(env: Any) -> dict[str, str]:
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in (env or {}).items()}


def _as_argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command or []]


def _image_env(model: dict[str, Any], compose_dir: Path) -> dict[str, dict[str, str]]:
    """image name -> the ENV its Dockerfile sets (from the services that build it)."""
    found: dict[str, dict[str, str]] = {}
    for spec in model["services"].values():
        build = spec.get("build")
        if build and spec.get("image"):
            text = (compose_dir / build["context"] / build["dockerfile"]).read_text()
            stage = text.rsplit("\nFROM ", 1)[-1].replace("\\\n", " ")  # the final stage's ENV
            env: dict[str, str] = {}
            for line in stage.splitlines():
                if line.startswith("ENV "):
                    env.update(dict(pair.split("=", 1) for pair in shlex.split(line[4:])))
            found[spec["image"]] = env
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Mapper:
    """Rewrites one service's compose-side values into this machine's addresses and folders."""

    def __init__(self, name: str, spec: dict[str, Any], services: dict[str, Any], externals: dict[str, str],
                 ports: dict[str, dict[int, int]], volumes: Path) -> None:
        self.name, self.spec, self.services, self.externals, self.ports = name, spec, services, externals, ports
        self.mounts = {}
        for entry in spec.get("volumes", []):
            source, target = str(entry).split(":")[:2]
            self.mounts[target] = volumes / source

    def value(self, text: str) -> str:
        if _URL.search(text):
            return _URL.sub(self._url, text)  # to other services: their addresses here, final
        text = self.own(self._paths(text))
        own = self.ports[self.name]
        if text.isdigit() and int(text) in own:
            return str(own[int(text)])
        return re.sub(r"^(--port=)(\d+)$", lambda m: m[1] + str(self._own_port(int(m[2]))), text)

    def own(self, text: str) -> str:
        """`127.0.0.1:PORT` (the container itself) as this service's mapped port."""
        return re.sub(r"\b(127\.0\.0\.1|localhost):(\d+)\b", lambda m: f"127.0.0.1:{self._own_port(int(m[2]))}", text)

    def _own_port(self, port: int) -> int:
        own = self.ports[self.name]
        if port not in own:
            raise WiringError(f"{self.name}: uses its own port {port}, which it does not `expose` "
                              f"(exposed: {sorted(own) or 'none'})")
        return own[port]

    def _url(self, m: re.Match) -> str:
        host, port = m["host"], int(m["port"]) if m["port"] else None
        if host in _LOOPBACK:
            raise WiringError(f"{self.name}: {m[0]} points at {host}, which in a container is the container "
                              "itself; use the service's name")
        if host not in self.services:
            raise WiringError(f"{self.name}: {m[0]} points at host {host!r}, which is no service of this "
                              f"compose file ({', '.join(sorted(self.services))})")
        if host == "redis":
            return self._redis(m, port)
        if host == "postgres":
            return self._postgres(m, port)
        return f"{m['scheme']}://{m['auth'] or ''}127.0.0.1:{self._port_of(host, port)}{m['path'] or ''}"

    def _port_of(self, service: str, port: int | None) -> int:
        exposed = self.ports[service]
        if port not in exposed:
            raise WiringError(f"{self.name}: reaches {service} on port {port}, which {service} does not expose")
        return exposed[port]

    def _redis(self, m: re.Match, port: int | None) -> str:
        if (port or 6379) != _listening_port(self.services["redis"], 6379):
            raise WiringError(f"{self.name}: {m[0]}: Redis listens on 6379, not {port}")
        return self.externals["redis"]

    def _postgres(self, m: re.Match, port: int | None) -> str:
        server = _as_dict(self.services["postgres"].get("environment"))
        user, _, password = (m["auth"] or "@")[:-1].partition(":")
        database = (m["path"] or "/").lstrip("/")
        want = (server.get("POSTGRES_USER", "postgres"), server.get("POSTGRES_PASSWORD"),
                server.get("POSTGRES_DB") or server.get("POSTGRES_USER", "postgres"), 5432)
        if (user, password, database, port or 5432) != want:
            raise WiringError(f"{self.name}: {m[0]} does not match the postgres service (user "
                              f"{want[0]}, its POSTGRES_PASSWORD, database {want[2]}, port 5432)")
        return self.externals["postgres"]

    def _paths(self, text: str) -> str:
        for target, source in sorted(self.mounts.items(), key=lambda item: -len(item[0])):
            if text == target or text.startswith(target + "/"):
                return str(source) + text[len(target):]
        return text


def _listening_port(spec: dict[str, Any], default: int) -> int:
    argv = _as_argv(spec.get("command"))
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else default


def plan_fleet(model: dict[str, Any], *, dotenv: dict[str, str], externals: dict[str, str], volumes: Path,
               compose_dir: Path, base_env: dict[str, str]) -> dict[str, ServicePlan]:
    """Every service as a process to start here (see the module docstring); WiringError if the
    compose file's wiring is wrong."""
    model = interpolate(model, dotenv)
    services = model["services"]
    ports = {name: {int(p): _free_port() for p in spec.get("expose", [])} for name, spec in services.items()}
    images = _image_env(model, compose_dir)
    plans = {}
    for name, spec in services.items():
        mapper = _Mapper(name, spec, services, externals, ports, volumes)
        env = dict(base_env)
        env.update({k: interpolate(v, env) for k, v in images.get(spec.get("image", ""), {}).items()})  # PATH=/venv/bin:$PATH
        if spec.get("env_file"):
            env.update(dotenv)  # the admin's .env: outside the compose file, not rewritten
        for key, value in _as_dict(spec.get("environment")).items():
            env[key] = "127.0.0.1" if value == "0.0.0.0" else mapper.value(value)
        for key in _PATH_SETTINGS:
            if key in env:
                env[key] = mapper._paths(env[key])
        plans[name] = ServicePlan(
            name=name, command=[mapper.value(a) for a in _as_argv(spec.get("command"))], env=env,
            healthcheck=_healthcheck(spec, mapper), depends_on=_depends(spec), one_shot=spec.get("restart") == "no",
            ports=ports[name])
        _check_published(name, spec, ports[name])
    return plans


def _healthcheck(spec: dict[str, Any], mapper: _Mapper) -> list[str] | None:
    test = (spec.get("healthcheck") or {}).get("test")
    if not test:
        return None
    kind, *rest = test
    argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
    return [mapper.value(arg) if "://" not in arg else mapper.own(arg) for arg in argv]  # a probe calls itself


def _depends(spec: dict[str, Any]) -> dict[str, str]:
    depends = spec.get("depends_on") or {}
    if isinstance(depends, list):
        return {name: "service_started" for name in depends}
    return {name: (cond or {}).get("condition", "service_started") for name, cond in depends.items()}


def _check_published(name: str, spec: dict[str, Any], exposed: dict[int, int]) -> None:
    for entry in spec.get("ports", []):
        container = int(str(entry).rsplit(":", 1)[-1].split("/")[0])
        if container not in exposed:
            raise WiringError(f"{name}: publishes container port {container}, which it does not expose")


def check_fleet(plans: dict[str, ServicePlan], declared_queues: set[str], volumes: Path) -> None:
    """What every clipbot process must agree on, and what the workers must cover."""
    from bot.config import Settings

    clipbot = {name: plan for name, plan in plans.items() if plan.clipbot in ("run", "worker")}
    settings = {name: _settings(Settings, plan) for name, plan in clipbot.items()}
    for name, values in settings.items():
        if values.embedded:
            raise WiringError(f"{name}: no CLIPBOT_BROKER_URL: it would run its own embedded engine")
    for attr in ("broker_url", "state_redis_url", "index_url", "clip_model", "visibility_timeout"):
        seen = {name: getattr(values, attr) for name, values in settings.items()}
        if len(set(map(str, seen.values()))) > 1:
            raise WiringError(f"the fleet disagrees on {attr}: {seen}")
    workers = {n: s for n, s in settings.items() if plans[n].clipbot == "worker"}
    _check_workers(plans, workers, declared_queues, volumes)


def _settings(settings_class: type, plan: ServicePlan) -> Any:
    import os

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(plan.env)
        return settings_class(_env_file=None)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _check_workers(plans: dict[str, ServicePlan], workers: dict[str, Any], declared: set[str], volumes: Path) -> None:
    pulls = [name for name, plan in plans.items() if "clipbot models pull" in " ".join(plan.command)]
    served: dict[str, list[str]] = {}
    for name, values in workers.items():
        argv = plans[name].command
        queues = argv[argv.index("--queues") + 1].split(",") if "--queues" in argv else list(values.worker_queues)
        queues = queues or sorted(declared)
        unknown = set(queues) - declared
        if unknown:
            raise WiringError(f"{name}: serves queue(s) {sorted(unknown)} that no plugin declares ({sorted(declared)})")
        if "gpu-long" in queues and len(queues) > 1:
            raise WiringError(f"{name}: serves gpu-long with {queues}: a long /imagine would hold up quick work")
        served[name] = queues
        for pull in pulls:
            if plans[name].depends_on.get(pull) != "service_completed_successfully":
                raise WiringError(f"{name}: does not wait for {pull} (depends_on: service_completed_successfully)")
            for key in _PATH_SETTINGS[:1]:
                if plans[name].env.get(key) != plans[pull].env.get(key):
                    raise WiringError(f"{name}: {key} is not the folder {pull} filled")
        if not Path(values.data_dir).is_relative_to(volumes):
            raise WiringError(f"{name}: CLIPBOT_DATA_DIR={values.data_dir} is on no volume: the pulled models "
                              "and the label cache would be lost with the container")
    missing = declared - {q for queues in served.values() for q in queues}
    if missing:
        raise WiringError(f"no worker serves queue(s) {sorted(missing)}")

# ---- running the plan ------------------------------------------------------------------------
def start_order(plans: dict[str, ServicePlan]) -> list[str]:
    """Services with their dependencies first (compose's order); WiringError on a cycle or an
    unknown dependency."""
    order: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name not in plans:
            raise WiringError(f"{path[-1]}: depends on {name!r}, which is no service")
        if name in path:
            raise WiringError(f"dependency cycle: {' -> '.join(path + (name,))}")
        if name not in order:
            for dependency in plans[name].depends_on:
                visit(dependency, path + (name,))
            order.append(name)

    for name in plans:
        visit(name, ())
    return order


class Fleet:
    """The planned services as processes under `workdir`; the external ones (the test's Redis and
    PostgreSQL) only have their healthchecks run. `skip`: service -> why it is not started."""

    def __init__(self, plans: dict[str, ServicePlan], workdir: Path, skip: dict[str, str] | None = None,
                 health_timeout: float = 180) -> None:
        self.plans, self.workdir, self.skip = plans, workdir, skip or {}
        self.health_timeout = health_timeout
        self.processes: dict[str, Any] = {}

    def up(self) -> None:
        for name in start_order(self.plans):
            plan = self.plans[name]
            if name in self.skip:
                continue
            for dependency, condition in plan.depends_on.items():
                self._wait_condition(name, dependency, condition)
            if plan.one_shot:
                self._run_once(plan)
            elif name not in EXTERNAL:
                self._start(plan)

    def _wait_condition(self, name: str, dependency: str, condition: str) -> None:
        if dependency in self.skip:
            raise WiringError(f"{name} depends on {dependency}, which is skipped: {self.skip[dependency]}")
        if condition == "service_healthy":
            self.wait_healthy(dependency)
        elif condition == "service_completed_successfully" and not self.plans[dependency].one_shot:
            raise WiringError(f"{name} waits for {dependency} to complete, but it is a long-running service")

    def _run_once(self, plan: ServicePlan) -> None:
        log = self.workdir / f"{plan.name}.log"
        with open(log, "ab") as out:
            done = subprocess.run(plan.command, env=plan.env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=self.health_timeout)
        if done.returncode != 0:
            raise AssertionError(f"one-shot {plan.name} exited {done.returncode}:\n{log.read_text()[-4000:]}")

    def _start(self, plan: ServicePlan) -> None:
        from tests.support.processes import LoggedProcess

        process = LoggedProcess(plan.command, self.workdir / f"{plan.name}.log", env=plan.env, cwd=self.workdir)
        process.name = plan.name
        self.processes[plan.name] = process

    def healthy(self, name: str) -> bool:
        plan = self.plans[name]
        if plan.healthcheck is None:
            raise WiringError(f"{name}: has no healthcheck")
        try:  # generous for a loaded 2-core machine; a probe that overruns is a failed one, as in compose
            done = subprocess.run(plan.healthcheck, env=plan.env, cwd=self.workdir, capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    def wait_healthy(self, name: str) -> None:
        from tests.support.polling import wait_until

        process = self.processes.get(name)

        def check() -> bool:
            if process is not None:
                process.check_running()
            return self.healthy(name)

        wait_until(check, timeout=self.health_timeout, every=0.5, what=f"{name} to be healthy",
                   detail=(process.log if process else None))

    def logs(self) -> str:
        return "\n".join(f"---- {name}\n{p.log()[-3000:]}" for name, p in self.processes.items())

    def down(self) -> None:
        for name in reversed(list(self.processes)):
            self.processes[name].stop()
