"""Batch intake in processes of its own (``api.intake.batch_pool``): the work runs outside the API
process, its problems come back as problems, anything else as ``IntakeFailed``, and what it
counted as created reaches the API process's metrics."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from api.errors import ProblemError
from api.intake.batch_pool import IntakeFailed, IntakePool
from api.intake.batch_pool import _ready as _ready_probe
from api.services import Services
from deploy.devstack.servers import RedisServer
from shared.runtime import metrics
from shared.settings import Settings

pytestmark = pytest.mark.integration
T = TypeVar("T")


def where(services: Services, answer: str) -> tuple[int, str]:
    metrics.record_created_counts({"kiln/test-intake": 3})
    return os.getpid(), answer


def refuses(services: Services) -> None:
    raise ProblemError(422, "predictions: too many", headers={"X-Why": "cap"})


def breaks(services: Services) -> None:
    raise RuntimeError("a bug")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Iterator[IntakePool]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as server:
        found = IntakePool(Settings(_env_file=None, redis_url=server.url, api_token="a"), processes=1)
        yield found
        found.close()


def in_own_loop(work: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on a thread of its own: a session-scoped sync Playwright keeps an event loop
    running on the main thread for the rest of the session."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, work).result()


def created(model: str) -> float:
    return metrics.PREDICTIONS_CREATED.labels(model=model)._value.get()


def test_work_runs_in_another_process_and_its_created_counts_reach_this_one(pool):
    before = created("kiln/test-intake")
    pid, answer = in_own_loop(pool.run(where, "ok"))  # type: ignore[arg-type]
    assert answer == "ok" and pid != os.getpid()
    assert created("kiln/test-intake") == before + 3


def test_a_problem_comes_back_as_the_same_problem(pool):
    with pytest.raises(ProblemError) as refused:
        in_own_loop(pool.run(refuses))  # type: ignore[arg-type]
    assert (refused.value.status, refused.value.detail, refused.value.headers) == (
        422,
        "predictions: too many",
        {"X-Why": "cap"},
    )


def test_any_other_failure_is_intake_failed(pool):
    with pytest.raises(IntakeFailed, match="RuntimeError: a bug"):
        in_own_loop(pool.run(breaks))  # type: ignore[arg-type]


def test_warm_starts_an_intake_process_before_any_batch(tmp_path):
    with RedisServer(tmp_path, appendonly=False) as server:
        pool = IntakePool(Settings(_env_file=None, redis_url=server.url, api_token="a"), processes=1)
        try:
            pool.warm()
            assert pool._pool is not None and len(pool._pool._processes) == 1
            assert pool._pool.submit(_ready_probe).result(timeout=60) is True
        finally:
            pool.close()
