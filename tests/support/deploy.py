"""What the deploy checks share: the repository's deploy files, parsed."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from tests.support import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
K8S_BASE = REPO_ROOT / "deploy" / "k8s" / "base"
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
