"""deploy/k8s as `kubectl apply -k` would apply it: each overlay rendered (tests/deploy/kustomize.py),
every object checked against Kubernetes' own schemas (kubernetes-validate, strict: a misspelt
field fails), the KEDA ScaledObjects against their vendored schema, and the wiring between the
objects (queues, selectors, ports, config and secret names) checked as the cluster would use it."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from engine.fair import backlog_key
from engine.settings import EngineSettings
from tests.conftest import ROOT
from tests.deploy.kustomize import KustomizeError, render, strategic_merge

K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.37.0"
OVERLAYS = ["cpu", "gpu"]
SCHEMAS = Path(__file__).parent / "schemas"


def _declared_queues() -> set[str]:
    from bot.config import Settings
    from bot.plugins import build_plugin_manager, declared_queues

    return set(declared_queues(build_plugin_manager(Settings(_env_file=None))))


def _by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def _worker_queues(deployment: dict) -> list[str]:
    (container,) = [c for c in _pod(deployment)["containers"] if c["name"] == "worker"]
    args = container["args"]
    assert args[:2] == ["clipbot", "worker"], args
    return args[args.index("--queues") + 1].split(",")


def check_object(obj: dict) -> None:
    """One rendered object against its schema: Kubernetes' for built-in kinds, ours for KEDA's."""
    if obj["apiVersion"].startswith("keda.sh/"):
        schema = json.loads((SCHEMAS / "keda-scaledobject.json").read_text())
        jsonschema.validate(obj, schema)
        return
    kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def test_every_object_is_valid_for_kubernetes(rendered):
    overlay, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds
    for obj in objects:
        check_object(obj)
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "clipbot", obj["metadata"]


def test_schema_checks_catch_a_misspelt_field(rendered):
    _, objects = rendered
    deployment = _by_kind(objects, "Deployment")["worker-quick"]
    bad = strategic_merge(deployment, {"spec": {"template": {"spec": {"containers": [
        {"name": "worker", "resource": {"limits": {"cpu": "1"}}}]}}}})
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        check_object(bad)
    scaled = _by_kind(objects, "ScaledObject")["worker-long"]
    no_list = json.loads(json.dumps(scaled))
    del no_list["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError, match="listName"):
        check_object(no_list)


def test_workers_serve_every_declared_queue_and_scale_on_their_own_lists(rendered):
    _, objects = rendered
    workers = {name: d for name, d in _by_kind(objects, "Deployment").items() if name.startswith("worker-")}
    served = {name: _worker_queues(d) for name, d in workers.items()}
    assert served == {"worker-quick": ["gpu", "io"], "worker-long": ["gpu-long"]}
    assert {q for queues in served.values() for q in queues} == _declared_queues()
    redis = _by_kind(objects, "Service")["redis"]
    for name, scaled in _by_kind(objects, "ScaledObject").items():
        target = scaled["spec"]["scaleTargetRef"]["name"]
        lists = [t["metadata"]["listName"] for t in scaled["spec"]["triggers"] if t["type"] == "redis"]
        # Celery's list key is the queue's name; a fair queue's held-back jobs are in its backlog list
        fair = [backlog_key(q) for q in served[target] if q in EngineSettings().fair_queues]
        assert sorted(lists) == sorted(served[target] + fair), name
        assert scaled["spec"]["minReplicaCount"] >= 1  # with no worker online, commands are refused
        for trigger in scaled["spec"]["triggers"]:
            host, port = trigger["metadata"]["address"].split(":")
            assert host == f"redis.{redis['metadata']['namespace']}.svc.cluster.local"
            assert int(port) == redis["spec"]["ports"][0]["port"]


def test_references_between_objects_resolve(rendered):
    _, objects = rendered
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    configs = _by_kind(objects, "ConfigMap")
    assert "clipbot-secrets" not in _by_kind(objects, "Secret")  # never applied over the real one
    for name, obj in {**_by_kind(objects, "Deployment"), **_by_kind(objects, "StatefulSet")}.items():
        pod = _pod(obj)
        assert obj["spec"]["selector"]["matchLabels"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
        for container in pod["containers"] + pod.get("initContainers", []):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source["secretRef"]
                assert ref["name"] in (configs if "configMapRef" in source else {secret["metadata"]["name"]}), name
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                http = container.get(probe, {}).get("httpGet")
                if http:
                    assert http["port"] in ports, (name, probe)
            if container.get("args", [None])[:1] == ["clipbot"]:
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                if "CLIPBOT_OBSERVE_PORT" in env:
                    assert ports["observe"] == int(env["CLIPBOT_OBSERVE_PORT"]), name
    pods = [o["spec"]["template"]["metadata"]["labels"] for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    for name, budget in _by_kind(objects, "PodDisruptionBudget").items():
        assert any(_selects(budget["spec"]["selector"], labels) for labels in pods), name


def _selects(selector: dict, labels: dict) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def test_the_gpu_overlay_puts_workers_on_gpus_and_the_cpu_overlay_does_not(rendered):
    overlay, objects = rendered
    for name in ("worker-quick", "worker-long"):
        pod = _pod(_by_kind(objects, "Deployment")[name])
        (worker,) = pod["containers"]
        env = {e["name"]: e["value"] for e in worker["env"]}
        assert env["CLIPBOT_OBSERVE_PORT"] == "9109"  # the base's env survived the patch's
        assert env["CLIPBOT_DEVICE"] == ("cuda" if overlay == "gpu" else "cpu")
        limits = worker["resources"]["limits"]
        assert limits["memory"] == "12Gi"  # merged, not replaced
        if overlay == "gpu":
            assert limits["nvidia.com/gpu"] == 1
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in pod
    bot = _pod(_by_kind(objects, "Deployment")["bot"])
    assert "nvidia.com/gpu" not in json.dumps(bot) and bot["containers"][0]["image"] == "clipbot-bot:latest"


def test_the_secret_example_is_valid_and_holds_no_real_token():
    secret = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    check_object(secret)
    values = secret["stringData"]
    assert {"DISCORD_TOKEN", "SLACK_BOT_TOKEN", "SLACK_APP_TOKEN", "SLACK_SIGNING_SECRET", "CLIPBOT_INDEX_URL"} <= set(values)
    assert not any(v.startswith(("xox", "xapp-")) or len(v) > 60 for v in values.values()), values


def test_the_renderer_refuses_what_it_does_not_understand(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\ncommonLabels: {a: b}\n")
    with pytest.raises(KustomizeError, match="commonLabels"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(KustomizeError, match="does not exist"):
        render(tmp_path)


def test_strategic_merge_merges_named_lists_and_replaces_others():
    base = {"containers": [{"name": "a", "env": [{"name": "X", "value": "1"}], "args": ["x"]}],
            "tolerations": [{"key": "k1"}]}
    patch = {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}], "args": ["y"]}, {"name": "b"}],
             "tolerations": [{"key": "k2"}]}
    merged = strategic_merge(base, patch)
    assert merged["containers"][0]["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]
    assert merged["containers"][0]["args"] == ["y"] and merged["containers"][1] == {"name": "b"}
    assert merged["tolerations"] == [{"key": "k2"}] and base["tolerations"] == [{"key": "k1"}]
