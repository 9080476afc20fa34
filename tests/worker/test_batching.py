"""Micro-batching on the tiny profile: a batch gives each prediction its own pixels, seed, outputs,
webhooks and fate; a failure or a cancel of one leaves the others alone."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from models.kit.contract import Predictor
from models.registry import find_model
from models.sd2_depth2img.schema import Depth2ImgInput
from models.sdxl_family.schema import IPAdapterXLInput
from shared.predictions.status import Status
from shared.settings import Settings
from tests.support.fakes import FakeContext
from tests.support.runner_harness import Harness
from tests.support.worker_inputs import FAST, INPUTS, MODEL, gradient, png_uri
from tests.support.xl_inputs import FACE, RAMP
from worker.predictor_pool import PredictorPool


def assert_same_pixels(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float rounding: kernels for another batch size may round a last bit differently
    (on CPU too), which can move a rare channel value by one level. A wrong seed, row or input
    changes nearly every value by far more."""
    difference = np.abs(actual.astype(int) - expected.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3, (difference.max(), (difference > 0).mean())


def _predictor(pool: PredictorPool) -> Predictor:
    return pool.get(find_model(MODEL))


def _alone(predictor: Predictor, fields: dict) -> list[np.ndarray]:
    return [np.asarray(image) for image in predictor.predict(Depth2ImgInput(**FAST | fields), FakeContext())]


def test_a_batch_gives_every_item_the_pixels_it_gets_alone(depth2img_pool: PredictorPool) -> None:
    predictor = _predictor(depth2img_pool)
    jobs = [predictor.prepare(Depth2ImgInput(**FAST | fields), FakeContext()) for fields in INPUTS]
    assert len({job.group_key for job in jobs}) == 1
    batched = predictor.generate(jobs, FakeContext().step_callback())
    for fields, outputs in zip(INPUTS, batched, strict=True):
        alone = _alone(predictor, fields)
        assert len(outputs) == len(alone) == fields.get("num_outputs", 1)
        for image, expected in zip(outputs, alone, strict=True):
            assert_same_pixels(np.asarray(image), expected)
    # Each item really is different: the batch did not hand everyone the same rows.
    assert not np.array_equal(np.asarray(batched[0][0]), np.asarray(batched[1][0]))
    assert not np.array_equal(np.asarray(batched[1][0]), np.asarray(batched[1][1]))


def test_image_j_of_a_prediction_is_what_seed_plus_j_gives_alone(depth2img_pool: PredictorPool) -> None:
    predictor = _predictor(depth2img_pool)
    first, second = _alone(predictor, INPUTS[0] | {"num_outputs": 2})
    assert_same_pixels(second, _alone(predictor, INPUTS[0] | {"seed": 8})[0])
    assert_same_pixels(first, _alone(predictor, INPUTS[0])[0])
    assert not np.array_equal(first, second)


@pytest.fixture
def batching(
    redis_url: str, make_settings: Callable[..., Settings], depth2img_pool: PredictorPool
) -> Iterator[Harness]:
    harness = Harness(redis_url, make_settings(max_batch_size=4, batch_window_ms=0), depth2img_pool)
    yield harness
    harness.close()


def test_queued_compatible_predictions_run_as_one_batch_each_with_its_own_record(batching: Harness) -> None:
    ids = [batching.submit(MODEL, **FAST | fields) for fields in INPUTS]
    other = batching.submit(MODEL, **FAST | INPUTS[0] | {"num_inference_steps": 5})
    taken = batching.work()
    # The first delivery took the three compatible ones; their own messages then found them taken.
    assert taken == [ids, [], [], [other]]
    starts = {pid: batching.timeline.first("gpu_start", pid) for pid in ids}
    assert len(set(starts.values())) == 1 or max(starts.values()) - min(starts.values()) < 0.01
    predictor = _predictor(batching.runner.predictors)
    for pid, fields in zip(ids, INPUTS, strict=True):
        prediction = batching.get(pid)
        assert prediction.status is Status.SUCCEEDED, prediction.logs
        assert f"Using seed: {fields['seed']}" in prediction.logs
        assert batching.notifier.of(pid) == ["start", "output", "completed"]
        stored, alone = batching.output_pixels(pid), _alone(predictor, fields)
        assert len(stored) == len(alone)
        for actual, expected in zip(stored, alone, strict=True):
            assert_same_pixels(actual, expected)
    assert batching.get(other).status is Status.SUCCEEDED


def test_batch_size_one_runs_each_prediction_on_its_own(redis_url, make_settings, depth2img_pool) -> None:
    harness = Harness(redis_url, make_settings(), depth2img_pool)
    try:
        ids = [harness.submit(MODEL, **FAST | fields) for fields in INPUTS[:2]]
        assert harness.work() == [[ids[0]], [ids[1]]]
    finally:
        harness.close()


def test_an_item_that_fails_to_prepare_fails_alone(batching: Harness) -> None:
    flat = png_uri(gradient(64, 64, horizontal=True).point(lambda _: 200))
    good, bad, good2 = (
        batching.submit(MODEL, **FAST | INPUTS[0]),
        batching.submit(MODEL, **FAST | INPUTS[0] | {"depth_image": flat}),
        batching.submit(MODEL, **FAST | INPUTS[1]),
    )
    assert batching.work()[0] == [good, bad, good2]
    assert batching.get(bad).status is Status.FAILED
    assert "single flat shade" in batching.get(bad).error
    assert batching.notifier.of(bad) == ["start", "completed"]
    for pid in (good, good2):
        assert batching.get(pid).status is Status.SUCCEEDED


class Sabotaged:
    """A predictor whose batched call fails whenever a poisoned prompt is in it, and which can cancel
    one prediction of the batch after the first step."""

    def __init__(self, predictor: Predictor, on_first_step: Callable[[], None] = lambda: None) -> None:
        self.predictor = predictor
        self.on_first_step = on_first_step
        self.calls: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.predictor, name)

    def generate(self, jobs: Sequence[Any], step_callback: Callable) -> list:
        self.calls.append(len(jobs))
        if any(job.inputs.prompt == "poison" for job in jobs):
            raise RuntimeError("poisoned batch")

        def step(pipe: Any, index: int, timestep: Any, kwargs: dict) -> dict:
            if index == 0:
                self.on_first_step()
            return step_callback(pipe, index, timestep, kwargs)

        return self.predictor.generate(jobs, step)


class SabotagedPool(PredictorPool):
    def __init__(self, pool: PredictorPool, sabotaged: Sabotaged) -> None:
        super().__init__(pool.settings)
        self._loaded = dict(pool._loaded) | {MODEL: sabotaged}


def test_a_failing_batch_reruns_each_item_alone_so_only_the_culprit_fails(
    redis_url, make_settings, depth2img_pool
) -> None:
    sabotaged = Sabotaged(_predictor(depth2img_pool))
    harness = Harness(
        redis_url, make_settings(max_batch_size=4, batch_window_ms=0), SabotagedPool(depth2img_pool, sabotaged)
    )
    try:
        ids = [harness.submit(MODEL, **FAST | INPUTS[0] | {"prompt": prompt}) for prompt in ("a", "poison", "b")]
        harness.work()
        assert sabotaged.calls == [3, 1, 1, 1]
        assert [harness.get(pid).status for pid in ids] == [Status.SUCCEEDED, Status.FAILED, Status.SUCCEEDED]
        assert harness.get(ids[1]).error == "poisoned batch"
    finally:
        harness.close()


def test_canceling_one_item_of_a_batch_stops_it_within_a_step_and_the_others_finish(
    redis_url, make_settings, depth2img_pool
) -> None:
    ids: list[str] = []
    harness: Harness

    def cancel_second() -> None:
        harness.store.request_cancel(ids[1])

    sabotaged = Sabotaged(_predictor(depth2img_pool), on_first_step=cancel_second)
    harness = Harness(
        redis_url, make_settings(max_batch_size=4, batch_window_ms=0), SabotagedPool(depth2img_pool, sabotaged)
    )
    try:
        ids += [harness.submit(MODEL, **FAST | fields) for fields in INPUTS[:2]]
        harness.work()
        kept, canceled = harness.get(ids[0]), harness.get(ids[1])
        assert sabotaged.calls == [2]
        assert canceled.status is Status.CANCELED and canceled.output is None
        assert "Prediction canceled." in canceled.logs
        # Canceled at the first step's check: one progress line, where the others logged four.
        assert canceled.logs.count("it/s") + canceled.logs.count("s/it") == 1
        assert kept.status is Status.SUCCEEDED and len(kept.output) == 1
        assert harness.notifier.of(ids[1]) == ["start", "completed"]
    finally:
        harness.close()


XL_MODEL = "kiln/ip-adapter-depth-xl"
# kiln/ip-adapter-depth-xl predictions that differ only in what each batch row carries as a tensor: the
# IP-Adapter strength, the InstantStyle mode and the ControlNet strength.
XL_STRENGTHS = [
    {"ip_adapter_scale": 0.0},
    {"ip_adapter_scale": 0.9, "controlnet_scale": 1.6},
    {"ip_adapter_mode": "style", "controlnet_scale": 0.0, "num_outputs": 2},
]


def test_xl_predictions_that_differ_only_in_strengths_run_as_one_batch(redis_url, make_settings) -> None:
    pool = PredictorPool(make_settings())
    predictor = pool.get(find_model(XL_MODEL))
    shared = {"control_image": RAMP, "ip_image": FACE, "prompt": "a red house", "num_inference_steps": 4,
              "width": 64, "height": 64, "seed": 7, "output_format": "png"}  # fmt: skip
    harness = Harness(redis_url, make_settings(max_batch_size=4, batch_window_ms=0), pool)
    try:
        ids = [harness.submit(XL_MODEL, **shared | fields) for fields in XL_STRENGTHS]
        assert harness.work() == [ids, [], []]
        for pid, fields in zip(ids, XL_STRENGTHS, strict=True):
            assert harness.get(pid).status is Status.SUCCEEDED, harness.get(pid).logs
            alone = predictor.predict(IPAdapterXLInput(**shared | fields), FakeContext())
            stored = harness.output_pixels(pid)
            assert len(stored) == len(alone) == fields.get("num_outputs", 1)
            for actual, expected in zip(stored, alone, strict=True):
                assert_same_pixels(actual, np.asarray(expected))
        assert not np.array_equal(harness.output_pixels(ids[0])[0], harness.output_pixels(ids[1])[0])
    finally:
        harness.close()
