"""A Redis outage just as a worker takes a message (the fake model, a real redis-server stopped and
started again): until its lease is taken a prediction has nothing but that message, so the run
waits for Redis instead of failing (Celery would then acknowledge the message, and the prediction
would stay queued for ever)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.predictions.status import Status
from tests.support.fake_predictors import FAKE_MODEL, INPUTS
from tests.support.runner_harness import Harness


def test_a_run_that_meets_a_redis_outage_before_its_lease_waits_for_redis_and_runs(
    tmp_path: Path, make_harness: Callable[..., Harness]
) -> None:
    with RedisServer(tmp_path / "redis") as server:
        harness = make_harness(redis=server.url)
        prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
        assert harness.next_delivery() == prediction_id  # delivered: the message is off the queue
        server.stop()
        restart = threading.Timer(1.0, server.start)
        restart.start()
        try:
            taken = harness.runner.run(prediction_id)
        finally:
            restart.join()
        harness.runner.uploader.drain()
        assert taken == [prediction_id]
        assert harness.get(prediction_id).status is Status.SUCCEEDED


def test_a_finish_that_meets_a_redis_outage_stops_renewing_the_lease(
    make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis gone just as the outputs are recorded: the run fails, and its heartbeat stops with it, so
    the lease lapses and the reaper runs the prediction again (a heartbeat left beating would keep it
    ``processing`` for ever)."""
    harness = make_harness()
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
    assert harness.next_delivery() == prediction_id

    def redis_down(*args: object, **kwargs: object) -> bool:
        raise redis.ConnectionError("Redis is restarting")

    monkeypatch.setattr(harness.runner.store, "update_while_processing", redis_down)
    with pytest.raises(redis.ConnectionError):
        harness.runner.run(prediction_id)
        harness.runner.uploader.drain()
    beating = [t.name for t in threading.enumerate() if t.name == f"heartbeat-{prediction_id}" and t.is_alive()]
    assert beating == []
    assert harness.get(prediction_id).status is Status.PROCESSING  # left for the reaper
