"""Fixtures for the model and worker tests (a pytest plugin, registered in tests/conftest.py): tiny weights
built once per session, settings pointing at them, the tiny XL pool and its predictors."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from models.registry import find_model
from shared.settings import Settings

if TYPE_CHECKING:
    from worker.predictor_pool import PredictorPool


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


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server for runner tests (real Lua, real Celery messages)."""
    from deploy.devstack.servers import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        yield server.url


@pytest.fixture(scope="session")
def depth2img_pool(make_settings: Callable[..., Settings]) -> PredictorPool:
    """The tiny depth2img predictor, set up once for every runner test."""
    from worker.predictor_pool import PredictorPool

    pool = PredictorPool(make_settings())
    pool.get(find_model("kiln/sd2-depth2img"))
    return pool


@pytest.fixture(scope="module")
def pool(make_settings: Callable[..., Settings]) -> PredictorPool:
    """The tiny XL predictors, set up once per test module."""
    from shared.scheduling import queues
    from worker.predictor_pool import PredictorPool

    pool = PredictorPool(make_settings())
    pool.load_for_queues([queues.SDXL])
    return pool


@pytest.fixture(scope="module")
def depth(pool: PredictorPool) -> Any:
    return pool.get(find_model("kiln/ip-adapter-depth-xl"))


@pytest.fixture(scope="module")
def openpose(pool: PredictorPool) -> Any:
    return pool.get(find_model("kiln/ip-adapter-openpose-xl"))
