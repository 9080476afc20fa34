"""Outputs that are files, not images (``NamedFile``, e.g. return_embeddings' ``.safetensors``): stored by
the runner as they are, under their own name and content type, beside the images encoded in the
prediction's ``output_format`` (the fake model, a real redis-server, in-memory storage)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest

from models.kit.contract import NamedFile, Output, StepCallback
from shared.predictions.status import Status
from shared.storage.objects import output_key
from tests.support.fake_predictors import FAKE_MODEL, INPUTS, FakeJob, FakePredictor
from tests.support.runner_harness import Harness

EMBEDDINGS = NamedFile("embeddings", b"\x08\0\0\0\0\0\0\0{}      ", "safetensors", "application/octet-stream")


@pytest.fixture
def harness(make_harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch) -> Harness:
    paint = FakePredictor.generate

    def with_a_file(self: FakePredictor, jobs: Sequence[FakeJob], step_callback: StepCallback) -> list[list[Output]]:
        return [[*outputs, EMBEDDINGS] for outputs in paint(self, jobs, step_callback)]

    monkeypatch.setattr(FakePredictor, "generate", with_a_file)
    return make_harness()


def test_a_file_output_is_stored_as_is_with_its_name_and_content_type(harness: Harness) -> None:
    prediction_id = harness.submit(FAKE_MODEL, **INPUTS[0] | {"num_outputs": 2, "output_format": "webp"})
    harness.work()
    prediction = harness.get(prediction_id)
    assert prediction.status is Status.SUCCEEDED, prediction.logs
    assert prediction.output == ["out-0.webp", "out-1.webp", "embeddings.safetensors"]
    key = output_key(prediction_id, "embeddings.safetensors")
    assert harness.storage.objects[key] == EMBEDDINGS.data
    assert harness.storage.content_types[key] == "application/octet-stream"
    assert harness.storage.content_types[output_key(prediction_id, "out-0.webp")] == "image/webp"
