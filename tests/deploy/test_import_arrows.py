"""The import arrows (api, worker, webhook_worker -> models -> shared) are checked by import-linter in
``make lint``; its contracts cover every package Kiln ships, and the tree keeps them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.support import REPO_ROOT


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_the_contracts_cover_every_package_kiln_ships() -> None:
    shipped = {pattern.rstrip("*") for pattern in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert set(pyproject()["tool"]["importlinter"]["root_packages"]) == shipped


def test_make_lint_checks_the_import_arrows() -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe and "$(VENV)/bin/lint-imports" in recipe[1]


def test_the_tree_keeps_the_import_contracts() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is not installed: make install installs it (dev extra)"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:]
