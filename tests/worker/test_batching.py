"""Micro-batching in the runner (the fake model, a real redis-server): queued predictions that can share
a pipeline call are claimed into one batch, and each keeps its own pixels, seed, outputs, webhooks
and fate; a failure or a cancel of one leaves the others alone. That a real pipeline gives a
prediction the same pixels alone or batched is shown in tests/models."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from shared.predictions.status import Status
from tests.support.fake_predictors import FAKE_MODEL, INPUTS, FakePredictor, expected_pixels
from tests.support.predictions import step_lines
from tests.support.runner_harness import Harness

BATCHING = {"max_batch_size": 4, "batch_window_ms": 0}


@pytest.fixture
def batching(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness(**BATCHING)


def batch_sizes(fake: FakePredictor) -> list[int]:
    return [len(batch) for batch in fake.batches]


def test_queued_compatible_predictions_run_as_one_batch_each_with_its_own_record(
    batching: Harness, fake: FakePredictor
) -> None:
    ids = [batching.submit(FAKE_MODEL, **fields) for fields in INPUTS]
    other = batching.submit(FAKE_MODEL, **INPUTS[0] | {"steps": 3})
    taken = batching.work()
    # The first delivery took the three compatible ones; their own messages then found them taken.
    assert taken == [ids, [], [], [other]]
    assert [[job.prompt for job in batch] for batch in fake.batches] == [
        [fields["prompt"] for fields in INPUTS],
        [INPUTS[0]["prompt"]],
    ]
    # One pipeline call: its items' starts are recorded one after another, before it runs.
    starts = [batching.timeline.first("gpu_start", pid) for pid in ids]
    assert max(starts) < min(batching.timeline.first("gpu_end", pid) for pid in ids)
    for pid, fields in zip(ids, INPUTS, strict=True):
        prediction = batching.get(pid)
        assert prediction.status is Status.SUCCEEDED, prediction.logs
        assert f"Using seed: {fields['seed']}" in prediction.logs
        assert step_lines(prediction.logs) == [(1, 2), (2, 2)]
        assert batching.notifier.of(pid) == ["start", "output", "completed"]
        stored, expected = batching.output_pixels(pid), expected_pixels(**fields)
        assert len(stored) == len(expected) == fields.get("num_outputs", 1)
        for actual, wanted in zip(stored, expected, strict=True):
            assert np.array_equal(actual, wanted)
    assert batching.get(other).status is Status.SUCCEEDED


def test_batch_size_one_runs_each_prediction_on_its_own(
    make_harness: Callable[..., Harness], fake: FakePredictor
) -> None:
    harness = make_harness()
    ids = [harness.submit(FAKE_MODEL, **fields) for fields in INPUTS[:2]]
    assert harness.work() == [[ids[0]], [ids[1]]]
    assert batch_sizes(fake) == [1, 1]


def test_an_item_that_fails_to_prepare_fails_alone(batching: Harness, fake: FakePredictor) -> None:
    good, bad, good2 = (
        batching.submit(FAKE_MODEL, **INPUTS[0]),
        batching.submit(FAKE_MODEL, **INPUTS[0] | {"fail": "prepare"}),
        batching.submit(FAKE_MODEL, **INPUTS[1]),
    )
    assert batching.work()[0] == [good, bad, good2]
    assert batching.get(bad).status is Status.FAILED
    assert batching.get(bad).error == "told to fail in prepare"
    assert batching.notifier.of(bad) == ["start", "completed"]
    # The others still ran together.
    assert [[job.prompt for job in batch] for batch in fake.batches] == [[INPUTS[0]["prompt"], INPUTS[1]["prompt"]]]
    for pid in (good, good2):
        assert batching.get(pid).status is Status.SUCCEEDED


def test_a_failing_batch_reruns_each_item_alone_so_only_the_culprit_fails(
    batching: Harness, fake: FakePredictor
) -> None:
    ids = [
        batching.submit(FAKE_MODEL, **INPUTS[0] | {"prompt": "a"}),
        batching.submit(FAKE_MODEL, **INPUTS[0] | {"prompt": "poison", "fail": "generate"}),
        batching.submit(FAKE_MODEL, **INPUTS[0] | {"prompt": "b"}),
    ]
    batching.work()
    assert batch_sizes(fake) == [3, 1, 1, 1]
    assert [batching.get(pid).status for pid in ids] == [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED]
    assert batching.get(ids[1]).error == "told to fail in generate"


def test_canceling_one_item_of_a_batch_stops_it_within_a_step_and_the_others_finish(
    batching: Harness, fake: FakePredictor
) -> None:
    ids = [batching.submit(FAKE_MODEL, **fields | {"steps": 4}) for fields in INPUTS[:2]]

    def cancel_second(step: int) -> None:
        if step == 0:
            batching.store.request_cancel(ids[1])

    fake.on_step = cancel_second
    batching.work()
    kept, canceled = batching.get(ids[0]), batching.get(ids[1])
    assert batch_sizes(fake) == [2] and fake.steps_run == 4
    assert canceled.status is Status.CANCELED and canceled.output is None
    assert "Prediction canceled." in canceled.logs
    # Canceled at the first step's check: one progress line, where the other logged four.
    assert step_lines(canceled.logs) == [(1, 4)]
    assert step_lines(kept.logs) == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert kept.status is Status.SUCCEEDED and len(kept.output) == 1
    assert batching.notifier.of(ids[1]) == ["start", "completed"]
