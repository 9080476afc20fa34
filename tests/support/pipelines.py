"""Fixtures for the model and worker tests (a pytest plugin, registered in tests/conftest.py): tiny weights
built once per session, settings pointing at them, the tiny XL pool and its predictors, and the fake
model (``tests.support.fake_predictors``) with runner harnesses serving it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from redis import Redis

from models.registry import find_model
from shared.settings import Settings
from tests.support import fake_weights_dir
from tests.support.fake_predictors import FAKE_SPEC, FakePredictor, registered

if TYPE_CHECKING:
    from tests.support.runner_harness import Harness, MemoryStorage
    from worker.predictor_pool import PredictorPool


@pytest.fixture(scope="session")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_weights_dir(tmp_path_factory)


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


@pytest.fixture
def fake_pool(make_settings: Callable[..., Settings]) -> Iterator[PredictorPool]:
    """A pool serving the fake model, set up afresh for the test (its batches start empty); the model
    is in the registry for the test's duration."""
    from worker.predictor_pool import PredictorPool

    with registered():
        pool = PredictorPool(make_settings())
        pool.get(FAKE_SPEC)
        yield pool


@pytest.fixture
def fake(fake_pool: PredictorPool) -> FakePredictor:
    """The fake model's predictor in ``fake_pool``: what it was given, and the hooks to steer it."""
    predictor = fake_pool.get(FAKE_SPEC)
    assert isinstance(predictor, FakePredictor)
    return predictor


@pytest.fixture
def make_harness(
    redis_url: str, make_settings: Callable[..., Settings], fake_pool: PredictorPool
) -> Iterator[Callable[..., Harness]]:
    """``make_harness(**settings)``: a runner harness serving the fake model, on the session's
    redis-server (or ``redis``) with in-memory storage (or ``storage``); closed after the test."""
    from tests.support.runner_harness import Harness

    made: list[Harness] = []

    def make(redis: str | Redis | None = None, storage: MemoryStorage | None = None, **settings: Any) -> Harness:
        made.append(Harness(redis or redis_url, make_settings(**settings), fake_pool, storage))
        return made[-1]

    yield make
    for harness in made:
        harness.close()


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
