"""A Redis outage just as a worker takes a message (tiny profile, a real redis-server stopped and
started again): until its lease is taken a prediction has nothing but that message, so the run
waits for Redis instead of failing (Celery would then acknowledge the message, and the prediction
would stay queued for ever)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from deploy.devstack.servers import RedisServer
from shared.predictions.status import Status
from shared.settings import Settings
from tests.support.runner_harness import Harness
from tests.support.worker_inputs import FAST, INPUTS, MODEL
from worker.predictor_pool import PredictorPool


def test_a_run_that_meets_a_redis_outage_before_its_lease_waits_for_redis_and_runs(
    tmp_path: Path, make_settings: Callable[..., Settings], depth2img_pool: PredictorPool
) -> None:
    with RedisServer(tmp_path / "redis") as server:
        harness = Harness(server.url, make_settings(), depth2img_pool)
        try:
            prediction_id = harness.submit(MODEL, **FAST | INPUTS[0])
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
        finally:
            harness.close()
