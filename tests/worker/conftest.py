"""Fixtures for worker tests: tiny weights built once per session, settings pointing at them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from shared.settings import Settings


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny weights are deterministic: reuse a built copy across runs when KILN_TEST_WEIGHTS_DIR is set."""
    configured = os.environ.get("KILN_TEST_WEIGHTS_DIR")
    return Path(configured) if configured else tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="session")
def make_settings(weights_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values = {"weights_profile": "tiny", "weights_dir": weights_dir, "device": "cpu", "max_image_side": 1024}
        values |= overrides
        return Settings(_env_file=None, **values)

    return make
