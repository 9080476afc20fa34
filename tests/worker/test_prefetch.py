"""Overlap in the runner (the fake model, a real redis-server): the next job's inputs are fetched and
preprocessed while the GPU runs the current one, outputs upload in a side thread, and the queue is
read in delivery order."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from shared.predictions.status import Status
from shared.scheduling import queues
from tests.support import wait_until
from tests.support.fake_predictors import FAKE_MODEL, INPUTS
from tests.support.runner_harness import Harness, MemoryStorage
from tests.support.step_gates import StepGate
from worker.timeline import Timeline, gpu_idle_share

MakeHarness = Callable[..., Harness]


@pytest.fixture
def overlapping(make_harness: MakeHarness) -> Harness:
    return make_harness(prefetch=True, async_upload=True, step_gates=True)


def test_the_second_job_is_fetched_and_prepared_while_the_first_denoises(overlapping: Harness, redis_url: str) -> None:
    with StepGate(redis_url) as gate:
        # The first job denoises until the side thread has prepared the second, however fast this CPU is.
        first = overlapping.submit(FAKE_MODEL, **INPUTS[0] | {"prompt": gate.prompt})
        second = overlapping.submit(FAKE_MODEL, **INPUTS[1])
        opener = threading.Thread(target=_open_once_prefetched, args=(overlapping, second, gate))
        opener.start()
        try:
            assert overlapping.work() == [[first], [second]]
        finally:
            gate.open()
            opener.join()
    timeline = overlapping.timeline
    [fetch] = timeline.events("fetch", second)  # fetched once, by the side thread, never again in line
    assert fetch.thread.startswith("prefetch")
    assert timeline.first("claimed", first) < fetch.at < timeline.first("gpu_end", first)
    assert timeline.first("prefetched", second) < timeline.first("gpu_end", first)
    # It was prepared before it was even claimed, and started denoising straight after.
    assert timeline.first("prefetched", second) < timeline.first("claimed", second)
    for pid in (first, second):
        prediction = overlapping.get(pid)
        assert prediction.status is Status.SUCCEEDED, prediction.logs
    # Log lines written while preparing ahead are replayed into the prediction's own logs.
    assert f"Using seed: {INPUTS[1]['seed']}" in overlapping.get(second).logs


def test_without_prefetch_the_second_job_is_fetched_after_it_is_claimed(make_harness: MakeHarness) -> None:
    harness = make_harness(prefetch=False)
    first, second = (harness.submit(FAKE_MODEL, **fields) for fields in INPUTS[:2])
    harness.work()
    assert harness.timeline.first("fetch", second) > harness.timeline.first("gpu_end", first)


def test_a_prefetched_prediction_canceled_before_it_starts_is_not_run(overlapping: Harness) -> None:
    first = overlapping.submit(FAKE_MODEL, **INPUTS[0])
    second = overlapping.submit(FAKE_MODEL, **INPUTS[1])
    overlapping.runner.run(overlapping.next_delivery())
    overlapping.store.request_cancel(second)
    assert overlapping.runner.run(overlapping.next_delivery()) == []
    overlapping.runner.uploader.drain()
    assert overlapping.get(first).status is Status.SUCCEEDED
    assert overlapping.get(second).status is Status.CANCELED
    assert overlapping.timeline.events("gpu_start", second) == []


def test_a_background_upload_completes_the_prediction_only_after_the_upload(overlapping: Harness) -> None:
    pid = overlapping.submit(FAKE_MODEL, **INPUTS[0])
    overlapping.work()
    assert overlapping.timeline.first("gpu_end", pid) < overlapping.timeline.first("uploaded", pid)
    assert overlapping.timeline.first("uploaded", pid) < overlapping.timeline.first("finished", pid)
    assert overlapping.get(pid).status is Status.SUCCEEDED
    assert next(e.thread for e in overlapping.timeline.events("uploaded", pid)).startswith("upload")


def test_a_failed_background_upload_fails_the_prediction(make_harness: MakeHarness) -> None:
    harness = make_harness(storage=MemoryStorage(fail_puts=True), async_upload=True)
    pid = harness.submit(FAKE_MODEL, **INPUTS[0])
    harness.work()
    prediction = harness.get(pid)
    assert prediction.status is Status.FAILED and "object storage unreachable" in prediction.error
    assert harness.notifier.of(pid) == ["start", "completed"]


def test_the_queue_is_read_in_the_order_a_worker_is_handed_it(make_harness: MakeHarness) -> None:
    harness = make_harness()
    batch = harness.submit(FAKE_MODEL, priority=queues.PRIORITY_BATCH, **INPUTS[0])
    first = harness.submit(FAKE_MODEL, **INPUTS[0])
    second = harness.submit(FAKE_MODEL, **INPUTS[0])
    assert harness.peek.upcoming(10) == [first, second, batch]
    assert harness.peek.upcoming(2) == [first, second]
    assert [harness.next_delivery() for _ in range(3)] == [first, second, batch]
    assert harness.peek.upcoming(10) == []


def test_gpu_idle_share_counts_the_gaps_between_denoising_calls() -> None:
    timeline = Timeline()
    for stage, pid, at in [
        ("gpu_start", "a", 0.0),
        ("gpu_end", "a", 1.0),
        ("gpu_start", "b", 1.5),
        ("gpu_start", "c", 1.5),
        ("gpu_end", "b", 2.0),
        ("gpu_end", "c", 2.0),
    ]:
        timeline.record(stage, pid)
        timeline._events[-1] = timeline._events[-1].__class__(stage, pid, at, "main")
    assert gpu_idle_share(timeline) == (0.5, 0.25)


def _open_once_prefetched(harness: Harness, prediction_id: str, gate: StepGate) -> None:
    try:
        wait_until(lambda: harness.timeline.events("prefetched", prediction_id), 120, what="the prefetch")
    finally:
        gate.open()
