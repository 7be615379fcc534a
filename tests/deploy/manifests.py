"""Reading the deployment files the way their tools would, without the tools.

No Docker engine and no Kubernetes API are available to the tests, so the compose file is read
as YAML (with its anchors and merge keys), and the kustomize tree is resolved here: resources,
components, strategic-merge patches of Deployments' container env, and ConfigMap generators.
The resolver refuses any kustomization field it does not implement, so the tests never check a
tree that differs from what `kubectl apply -k` would apply.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SERVICES_DIR = ROOT / "services"
K8S_BASE = ROOT / "deploy" / "k8s" / "base"
OPERATIONS_GUIDE = ROOT / "docs" / "operations.md"

PENDING_SECURITY_VARIABLES: frozenset[str] = frozenset()
"""Variables the manifests may set before the code reads them (documented in the operations
guide's "Kafka client security" section meanwhile). None now: the Kafka client security
variables of issue 6 are read by plumbing/config.py, and a variable the code does not read
(such as a SASL mechanism, which the code fixes) must not be set."""

_ENV_READ = re.compile(
    r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z][A-Z0-9_]*)["']|"""
    r"""os\.environ\[\s*["']([A-Z][A-Z0-9_]*)["']\s*\]"""
)


@cache
def variables_read_by_code() -> frozenset[str]:
    """Every environment variable the hand-written code under services/ reads."""
    found: set[str] = set()
    for path in SERVICES_DIR.rglob("*.py"):
        if "generated" in path.relative_to(SERVICES_DIR).parts:
            continue
        for match in _ENV_READ.finditer(path.read_text(encoding="utf-8")):
            found.add(match.group(1) or match.group(2))
    return frozenset(found)


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


# --- kustomize ---------------------------------------------------------------------------------

_KUSTOMIZATION_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "components",
    "patches",
    "configMapGenerator",
    "images",
}


def _kustomization(directory: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(loaded) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise ValueError(f"{directory}: kustomization fields this resolver lacks: {unknown}")
    return loaded


def _merge_container_env(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Strategic merge of a Deployment patch that only adds env to containers by name."""
    if set(patch) != {"apiVersion", "kind", "metadata", "spec"} or set(patch["spec"]) != {
        "template"
    }:
        raise ValueError(f"patch of {patch['metadata']['name']} does more than container env")
    containers = {c["name"]: c for c in target["spec"]["template"]["spec"]["containers"]}
    for patched in patch["spec"]["template"]["spec"]["containers"]:
        if set(patched) != {"name", "env"}:
            raise ValueError(f"patch of container {patched['name']} does more than env")
        container = containers[patched["name"]]
        env = {item["name"]: item for item in container.get("env", [])}
        for item in patched["env"]:
            env[item["name"]] = item
        container["env"] = list(env.values())


def _generated_config_map(directory: Path, spec: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, str] = {}
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for file in spec.get("files", []):
        data[Path(file).name] = (directory / file).read_text(encoding="utf-8")
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": spec["name"]},
        "data": data,
    }


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize DIRECTORY` would print, generator names without their
    content hash suffix."""
    kustomization = _kustomization(directory)
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        resources += kustomize_build(path) if path.is_dir() else load_yaml_documents(path)
    resources += [
        _generated_config_map(directory, spec)
        for spec in kustomization.get("configMapGenerator", [])
    ]
    patches: list[tuple[Path, dict[str, Any]]] = [
        (directory, patch) for patch in kustomization.get("patches", [])
    ]
    for component in kustomization.get("components", []):
        component_dir = directory / component
        component_kustomization = _kustomization(component_dir)
        if component_kustomization["kind"] != "Component":
            raise ValueError(f"{component_dir} is not a kustomize Component")
        patches += [(component_dir, patch) for patch in component_kustomization["patches"]]
    for base, patch in patches:
        for document in load_yaml_documents(base / patch["path"]):
            target = next(
                r
                for r in resources
                if r["kind"] == document["kind"]
                and r["metadata"]["name"] == document["metadata"]["name"]
            )
            _merge_container_env(target, document)
    resources = copy.deepcopy(resources)
    images = {image["name"]: image for image in kustomization.get("images", [])}
    for resource in resources:
        if resource["kind"] == "Deployment":
            for container in resource["spec"]["template"]["spec"]["containers"]:
                image = images.get(container["image"])
                if image is not None:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
        if "namespace" in kustomization:
            resource["metadata"]["namespace"] = kustomization["namespace"]
        for label_set in kustomization.get("labels", []):
            resource["metadata"].setdefault("labels", {}).update(label_set["pairs"])
    return resources


def of_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}
