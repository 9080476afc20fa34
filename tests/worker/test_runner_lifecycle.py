"""The runner ends every prediction through the one lifecycle (``PredictionLifecycle``), whatever
way it stops: succeeded, failed, canceled, or past its time limit (the fake model, a real redis-server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from shared.db import keys
from shared.predictions.record import format_timestamp, utcnow
from shared.predictions.retention import DataRemoval
from shared.predictions.status import Status
from shared.scheduling import lost_messages
from shared.scheduling.lost_messages import LostMessages, mark_sent_in_pipeline
from shared.storage.objects import prediction_prefix
from tests.support.fake_predictors import FAKE_MODEL, INPUTS, FakePredictor
from tests.support.lifecycle import record_endings
from tests.support.runner_harness import Harness
from worker.context import RunContext


@pytest.fixture
def ended(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Status]]:
    """Every call of the one function that follows a terminal transition, as (prediction id, status)."""
    return record_endings(monkeypatch)


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(async_upload=True)


def test_each_way_a_run_stops_ends_the_prediction_once_through_the_lifecycle(harness: Harness, ended) -> None:
    succeeded = harness.submit(FAKE_MODEL, **INPUTS[0])
    failed = harness.submit(FAKE_MODEL, **INPUTS[0] | {"fail": "prepare"})
    canceled = harness.submit(FAKE_MODEL, **INPUTS[1])
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
    late = harness.submit(FAKE_MODEL, **INPUTS[0])
    past = json.dumps(format_timestamp(utcnow() - timedelta(seconds=1)))
    harness.redis.hset(keys.prediction(late), "deadline", past)
    assert harness.work() == [[]]  # dropped: nothing ran (reached while running: tests/integration/test_deadlines.py)
    assert harness.get(late).status is Status.ABORTED and harness.get(late).started_at is None
    assert ended == [(late, Status.ABORTED)] and harness.notifier.of(late) == ["completed"]


def test_a_run_past_its_time_limit_stops_at_the_next_step_and_fails(
    make_harness: Callable[..., Harness], fake: FakePredictor, ended
) -> None:
    harness = make_harness(model_time_limits_s={FAKE_MODEL: 0.15})
    slow = harness.submit(FAKE_MODEL, **INPUTS[0] | {"steps": 20, "step_s": 0.1})
    harness.work()
    prediction = harness.get(slow)
    assert prediction.status is Status.FAILED and prediction.output is None
    assert prediction.error == "prediction exceeded its time limit of 0.15 s"
    assert fake.steps_run < 20  # stopped at a step, long before the loop would have ended
    assert ended == [(slow, Status.FAILED)] and harness.notifier.of(slow) == ["start", "completed"]


def test_a_message_whose_record_a_failover_lost_runs_once_the_record_is_written_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message arrives, its record is gone (the primary it was written on failed over first), and the
    API's retried write brings the record back a moment later: the worker waits for it and runs it."""
    import worker.runner

    monkeypatch.setattr(worker.runner, "RECORD_POLL_S", 0.05)
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
    saved = harness.redis.hgetall(keys.prediction(prediction_id))
    harness.redis.delete(keys.prediction(prediction_id))
    rewritten = threading.Timer(0.3, lambda: harness.redis.hset(keys.prediction(prediction_id), mapping=saved))
    rewritten.start()
    harness.work()
    rewritten.join()
    assert harness.get(prediction_id).status is Status.SUCCEEDED


def test_a_message_whose_record_never_comes_is_dropped_after_the_wait(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.runner

    monkeypatch.setattr(worker.runner, "RECORD_WAIT_S", 0.2)
    monkeypatch.setattr(worker.runner, "RECORD_POLL_S", 0.05)
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
    harness.redis.delete(keys.prediction(prediction_id))
    assert harness.work() == [[]]
    assert harness.store.get(prediction_id) is None


def test_a_message_the_lost_message_sweep_sent_again_runs_its_prediction_once(
    harness: Harness, ended, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A false alarm of ``shared.scheduling.lost_messages``: a worker popped the message but was slow to
    claim it, and the sweep, finding nothing left ahead of it, sent a second one; the second delivery finds
    the prediction started (or ended) and does nothing."""
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
    with harness.redis.pipeline() as pipe:
        mark_sent_in_pipeline(pipe, [prediction_id])
        pipe.execute()
    assert harness.next_delivery() == prediction_id
    monkeypatch.setattr(lost_messages, "GRACE_S", 0.0)
    assert LostMessages(harness.redis, harness.messages).resend() == 1

    assert harness.runner.run(prediction_id) == [prediction_id]
    assert harness.work() == [[]]  # the duplicate: delivered, nothing run
    assert ended == [(prediction_id, Status.SUCCEEDED)]
    events = harness.notifier.of(prediction_id)
    assert events.count("start") == 1 and events[-1] == "completed" and events.count("completed") == 1
    assert harness.get(prediction_id).attempt == 1
    assert harness.redis.zscore(keys.queued_waiting(), prediction_id) is None


def ended_during_the_upload(harness: Harness, prediction_id: str, elsewhere: Callable[[], None]) -> None:
    """Run the prediction; as its first output is stored, ``elsewhere`` happens (the attempt has lost its lease)."""
    happened: list[str] = []

    def once(key: str) -> None:
        if not happened:
            happened.append(key)
            elsewhere()

    harness.storage.before_put = once
    harness.work()
    assert happened


def test_outputs_stored_after_a_delete_ended_the_prediction_are_deleted(harness: Harness) -> None:
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0] | {"num_outputs": 3})

    def canceled_and_deleted() -> None:
        assert harness.store.transition(prediction_id, Status.CANCELED)
        DataRemoval(harness.redis, harness.storage).remove([prediction_id])  # type: ignore[arg-type]

    ended_during_the_upload(harness, prediction_id, canceled_and_deleted)
    assert harness.get(prediction_id).status is Status.CANCELED and harness.get(prediction_id).data_removed
    assert harness.storage.under(prediction_prefix(prediction_id)) == []


def test_outputs_stored_after_another_attempt_took_the_prediction_are_left_to_it(harness: Harness) -> None:
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0] | {"num_outputs": 2})

    def taken_over() -> None:  # the reaper gave it to another attempt, which stores the same names
        attempt = harness.get(prediction_id).attempt
        assert harness.store.transition(prediction_id, Status.STARTING, if_attempt=attempt, attempt=attempt + 1)

    ended_during_the_upload(harness, prediction_id, taken_over)
    assert harness.get(prediction_id).status is Status.STARTING
    assert len(harness.storage.under(prediction_prefix(prediction_id))) == 2


def test_an_attempt_another_took_over_writes_no_more_log_lines(harness: Harness, monkeypatch) -> None:
    """A worker stalled past its lease (a pause, a partition) wakes up while another attempt runs the
    prediction: its step lines must not land in that run's logs (nor in an ended one's, cleared at
    retention, nor recreate an expired record's key)."""
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0])
    on_step = RunContext.on_step

    def taken_over_at_the_first_step(self: RunContext, pipe: Any, step: int, started: float) -> None:
        if step == 0:
            attempt = harness.get(prediction_id).attempt
            assert harness.store.transition(prediction_id, Status.STARTING, if_attempt=attempt, attempt=attempt + 1)
            assert harness.store.transition(prediction_id, Status.PROCESSING, attempt=attempt + 1)
            harness.redis.append(keys.prediction_logs(prediction_id), "the other attempt's line\n")
        on_step(self, pipe, step, started)

    monkeypatch.setattr(RunContext, "on_step", taken_over_at_the_first_step)
    harness.work()
    taken = harness.get(prediction_id)
    assert taken.status is Status.PROCESSING
    assert taken.logs.endswith("the other attempt's line\n"), taken.logs
