"""The runner ends every prediction through the one lifecycle (``PredictionLifecycle``), whatever
way it stops: succeeded, failed, or canceled (tiny profile, a real redis-server)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from shared.db import keys
from shared.predictions.record import format_timestamp, utcnow
from shared.predictions.status import Status
from shared.settings import Settings
from tests.support.lifecycle import record_endings
from tests.support.runner_harness import Harness
from tests.support.worker_inputs import FAST, INPUTS, MODEL, gradient, png_uri
from worker.predictor_pool import PredictorPool


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Status]]:
    """Every call of the one function that follows a terminal transition, as (prediction id, status)."""
    return record_endings(monkeypatch)


@pytest.fixture
def harness(redis_url: str, make_settings: Callable[..., Settings], depth2img_pool: PredictorPool) -> Iterator[Harness]:
    harness = Harness(redis_url, make_settings(async_upload=True), depth2img_pool)
    yield harness
    harness.close()


def test_each_way_a_run_stops_ends_the_prediction_once_through_the_lifecycle(harness: Harness, ended) -> None:
    flat = png_uri(gradient(64, 64, horizontal=True).point(lambda _: 200))
    succeeded = harness.submit(MODEL, **FAST | INPUTS[0])
    failed = harness.submit(MODEL, **FAST | INPUTS[0] | {"depth_image": flat})
    canceled = harness.submit(MODEL, **FAST | INPUTS[1])
    # Canceled after it was taken, before its first step: the runner sees the flag and stops.
    harness.redis.hset(keys.prediction(canceled), "cancel_requested", "true")
    harness.work()
    assert sorted(ended) == sorted(
        [(succeeded, Status.SUCCEEDED), (failed, Status.FAILED), (canceled, Status.CANCELED)]
    )
    for prediction_id, status in ended:
        assert harness.get(prediction_id).status is status
        assert harness.notifier.of(prediction_id)[-1] == "completed"
        assert harness.redis.zscore(keys.retention(), f"prediction:{prediction_id}") is not None


def test_a_delivery_past_its_deadline_is_dropped_and_ends_aborted(harness: Harness, ended) -> None:
    late = harness.submit(MODEL, **FAST | INPUTS[0])
    past = json.dumps(format_timestamp(utcnow() - timedelta(seconds=1)))
    harness.redis.hset(keys.prediction(late), "deadline", past)
    assert harness.work() == [[]]  # dropped: nothing ran (reached while running: tests/integration/test_deadlines.py)
    assert harness.get(late).status is Status.ABORTED and harness.get(late).started_at is None
    assert ended == [(late, Status.ABORTED)] and harness.notifier.of(late) == ["completed"]
