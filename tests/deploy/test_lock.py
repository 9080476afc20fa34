"""requirements.lock: every dependency and tool pinned exactly, used by make install and both images."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import REPO_ROOT
from tests.support.deploy import DOCKER_DIR, reachable

LOCK = REPO_ROOT / "requirements.lock"


def locked() -> dict[str, str]:
    """The lock as {canonical name: exact version}; a line that is not `name==version` fails the test."""
    pins: dict[str, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line.strip())
        assert match, f"not an exact pin: {line!r}"
        pins[canonicalize_name(match[1])] = match[2]
    return pins


def declared() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]


def test_every_declared_dependency_is_locked_within_its_range():
    pins = locked()
    for requirement in map(Requirement, declared()):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement.specifier)


def test_every_transitive_dependency_is_locked():
    missing = {canonicalize_name(n) for n in reachable(declared())} - set(locked())
    assert not missing, f"installed but not pinned: {sorted(missing)}: run make lock"


def test_the_installed_environment_is_the_lock():
    """make install (what CI runs) installs exactly the locked versions."""
    differ = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific pin (e.g. a CUDA library) absent here
        if installed != version:
            differ[name] = (installed, version)
    assert not differ, f"installed (got, locked): {differ}"


def test_make_install_installs_from_the_lock():
    makefile = (REPO_ROOT / "Makefile").read_text()
    installs = re.findall(r"^\t(.*pip install.*)$", makefile.split("\nlock:")[0], flags=re.M)
    assert installs and all("PIP_CONSTRAINT=$(LOCK)" in line for line in installs), installs
    assert re.search(r"^LOCK := requirements\.lock$", makefile, flags=re.M)


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_each_image_installs_kiln_from_the_lock(dockerfile):
    text = (DOCKER_DIR / dockerfile).read_text()
    assert re.search(r"^COPY .*\brequirements\.lock\b", text, flags=re.M)
    installs = re.findall(r"^RUN (.*pip install .*)$", text, flags=re.M)
    kiln_installs = [line for line in installs if "torch==" not in line]
    assert kiln_installs and all("requirements.lock" in line for line in kiln_installs), kiln_installs
