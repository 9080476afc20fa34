"""What the deploy checks share: the repository's deploy files, parsed."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support import REPO_ROOT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
DOCKER_DIR = REPO_ROOT / "deploy" / "docker"
K8S_BASE = REPO_ROOT / "deploy" / "k8s" / "base"
SCHEMAS = Path(__file__).parent / "schemas"


def load_yaml(path: Path) -> object:
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose() -> dict:
    """docker-compose.yml with its anchors and merge keys resolved, as Compose reads it."""
    document = load_yaml(COMPOSE_FILE)
    assert isinstance(document, dict)
    return document
