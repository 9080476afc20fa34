"""What the deploy checks share: the repository's deploy files, parsed."""

from __future__ import annotations

import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TypeGuard, cast

import yaml
from packaging.requirements import Requirement

from tests.support import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
K8S_BASE = REPO_ROOT / "deploy" / "k8s" / "base"
K8S_HA = REPO_ROOT / "deploy" / "k8s" / "ha"
SCHEMAS = REPO_ROOT / "tests" / "deploy" / "schemas"


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict:
    """docker-compose.yml with its anchors and merge keys resolved, as Compose reads it."""
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document


def kustomized(directory: Path) -> list[dict]:
    """The objects a kustomization builds, without kustomize: its resources (files, or directories
    built the same way) with its patches merged in. Namespace, labels and images are left out; a
    test compares the result with ``kubectl kustomize`` where that is installed."""
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert isinstance(kustomization, dict)
    documents: list[dict] = []
    for resource in kustomization["resources"]:
        path = directory / resource
        documents += kustomized(path) if path.is_dir() else load_all_yaml(path)
    for entry in kustomization.get("patches", []):
        for patch in load_all_yaml(directory / entry["path"]):
            (at,) = [i for i, d in enumerate(documents) if identity(d) == identity(patch)]
            merged = strategic_merge(documents[at], patch, by_name=not is_custom_resource(patch))
            documents[at] = cast(dict, merged)
    return documents


def identity(document: dict) -> tuple[str, str]:
    return document["kind"], document["metadata"]["name"]


def is_custom_resource(document: dict) -> bool:
    """Kubernetes' own API groups have no dot ("apps", "policy") or end in ".k8s.io"."""
    group = document["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def strategic_merge(base: object, patch: object, *, by_name: bool) -> object:
    """``patch`` over ``base`` as a strategic merge patch does it for the fields Kiln's patches touch:
    maps merge key by key, lists of named items (containers, env) item by item when ``by_name``,
    any other list or value is replaced. A custom resource's lists are always replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value, by_name=by_name) if key in base else value
        return merged
    if by_name and _named_items(base) and _named_items(patch):
        items: dict[str, object] = {item["name"]: item for item in base}
        for item in patch:
            name = item["name"]
            items[name] = strategic_merge(items[name], item, by_name=True) if name in items else item
        return list(items.values())
    return patch


def _named_items(value: object) -> TypeGuard[list[dict]]:
    return isinstance(value, list) and all(isinstance(item, dict) and "name" in item for item in value)


def heredocs(script: str) -> list[list[str]]:
    """The lines of each ``<<EOF`` ... ``EOF`` block of a shell script: the config files it writes."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in script.splitlines():
        if current is not None:
            if line == "EOF":
                blocks.append(current)
                current = None
            else:
                current.append(line)
        elif line.rstrip().endswith("<<EOF"):
            current = []
    return blocks


def reachable(requirements: list[str]) -> set[str]:
    """Every distribution an install of ``requirements`` pulls in, from the installed metadata (a package
    reached again with other extras is walked again for their dependencies)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = requirement.name.lower().replace("_", "-")
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if (name, frozenset(requirement.extras)) in seen:
            continue
        seen.add((name, frozenset(requirement.extras)))
        try:
            dependencies = metadata.requires(requirement.name) or []
        except metadata.PackageNotFoundError:
            continue
        extras = requirement.extras
        for dependency in map(Requirement, dependencies):
            marker = dependency.marker
            if marker is None or marker.evaluate({"extra": ""}) or any(marker.evaluate({"extra": e}) for e in extras):
                dependency.marker = None
                pending.append(dependency)
    return {name for name, _ in seen}


def run_start_script(script: str, data_dir: Path, environment: dict[str, str], server: str) -> None:
    """Run a Redis or sentinel container's start script here, with ``/data`` at ``data_dir`` and the
    final ``exec`` of ``server`` left out: what it writes is what the server would start from."""
    script = script.replace("/data/", f"{data_dir}/")
    script = re.sub(rf"^exec {server} .*?(?<!\\)$", "true", script, flags=re.MULTILINE | re.DOTALL)
    subprocess.run(["sh", "-euc", script], env={"PATH": "/usr/bin:/bin", **environment}, check=True, timeout=30)
