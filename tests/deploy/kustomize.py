"""A small kustomize for the subset deploy/k8s uses, so the tests can render what
`kubectl apply -k` would apply, without kubectl.

Supported: `resources` (files and other kustomization folders), `components` (kind Component),
`patches` with a `path` to a strategic-merge patch (its targets found by kind and name),
`namespace`, and `images` (newName, newTag). Anything else in a kustomization is refused, so a
field this renderer would silently skip cannot hide in the manifests.

Strategic merge follows Kubernetes' rules for the fields we patch: maps merge key by key, lists
of named things merge by their merge key (containers by name, ports by containerPort, ...),
other lists are replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KustomizeError", "render", "strategic_merge"]

_KNOWN = {"apiVersion", "kind", "resources", "components", "patches", "namespace", "images"}
# patchMergeKey of the list fields our patches touch (from the Kubernetes API's openapi extensions)
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
               "envFrom": None}
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                   "CustomResourceDefinition"}


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render faithfully, or a patch without a target."""


def render(folder: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize FOLDER` would print, in resource order."""
    folder = Path(folder)
    spec = _load_kustomization(folder)
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        objects.extend(_resource(folder / entry))
    for entry in spec.get("components", []):
        objects = _apply_component(folder / entry, objects)
    for patch in spec.get("patches", []):
        _apply_patch_entry(folder, patch, objects)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        _set_image(objects, image)
    return objects


def _load_kustomization(folder: Path, kind: str = "Kustomization") -> dict[str, Any]:
    path = folder / "kustomization.yaml"
    if not path.is_file():
        raise KustomizeError(f"{folder}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - _KNOWN
    if unknown:
        raise KustomizeError(f"{path}: this renderer does not support {sorted(unknown)}")
    if spec.get("kind", "Kustomization") != kind:
        raise KustomizeError(f"{path}: kind {spec.get('kind')!r}, expected {kind}")
    return spec


def _resource(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        return render(path)
    if not path.is_file():
        raise KustomizeError(f"resource {path} does not exist")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _apply_component(folder: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = _load_kustomization(folder, kind="Component")
    objects = objects + [obj for entry in spec.get("resources", []) for obj in _resource(folder / entry)]
    for patch in spec.get("patches", []):
        _apply_patch_entry(folder, patch, objects)
    return objects


def _apply_patch_entry(folder: Path, entry: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    if set(entry) != {"path"}:
        raise KustomizeError(f"{folder}: only `patches: - path: FILE` is supported, not {sorted(entry)}")
    for patch in yaml.safe_load_all((folder / entry["path"]).read_text()):
        if patch:
            target = _find(objects, patch["kind"], patch["metadata"]["name"])
            merged = strategic_merge(target, patch)
            target.clear()
            target.update(merged)


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise KustomizeError(f"patch target {kind}/{name}: {len(found)} objects match")
    return found[0]


def strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    """`patch` merged into a copy of `base` (Kubernetes strategic merge, for the fields above)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value, key) if key in base else copy.deepcopy(value)
        return merged
    key = _MERGE_KEYS.get(field or "")
    if isinstance(base, list) and isinstance(patch, list) and key:
        merged = copy.deepcopy(base)
        for item in patch:
            same = next((i for i, old in enumerate(merged) if old.get(key) == item.get(key)), None)
            if same is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[same] = strategic_merge(merged[same], item)
        return merged
    return copy.deepcopy(patch)


def _set_image(objects: list[dict[str, Any]], image: dict[str, Any]) -> None:
    for obj in objects:
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag or 'latest')}"
