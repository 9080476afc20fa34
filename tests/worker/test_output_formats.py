"""``output_format`` and ``output_quality`` through the runner: each output stored with its format's bytes,
content type and file extension (the fake model, a real redis-server, in-memory storage)."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from shared.predictions.status import Status
from shared.storage.objects import output_key
from tests.support.fake_predictors import FAKE_MODEL, INPUTS, expected_pixels
from tests.support.runner_harness import Harness

FORMATS = {
    "png": (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    "jpg": (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    "webp": (b"RIFF", "image/webp", "WEBP"),
}
TWO_OUTPUTS = INPUTS[0] | {"num_outputs": 2}


@pytest.fixture
def harness(make_harness: Callable[..., Harness]) -> Harness:
    return make_harness()


def stored(harness: Harness, prediction_id: str) -> list[tuple[str, bytes, str]]:
    names = harness.get(prediction_id).output or []
    keys = [output_key(prediction_id, name) for name in names]
    return [
        (name, harness.storage.objects[key], harness.storage.content_types[key])
        for name, key in zip(names, keys, strict=True)
    ]


def test_each_output_format_stores_its_bytes_content_type_and_extension(harness: Harness) -> None:
    ids = {
        fmt: harness.submit(FAKE_MODEL, **TWO_OUTPUTS | {"output_format": fmt, "output_quality": 80}) for fmt in FORMATS
    }
    default = harness.submit(FAKE_MODEL, **TWO_OUTPUTS)
    harness.work()
    expected = [pixels.astype(int) for pixels in expected_pixels(**TWO_OUTPUTS)]
    for fmt, prediction_id in ids.items():
        assert harness.get(prediction_id).status is Status.SUCCEEDED, harness.get(prediction_id).logs
        magic, content_type, pillow_format = FORMATS[fmt]
        outputs = stored(harness, prediction_id)
        assert [name for name, _, _ in outputs] == [f"out-0.{fmt}", f"out-1.{fmt}"]
        for (_, data, stored_type), wanted in zip(outputs, expected, strict=True):
            assert data.startswith(magic) and stored_type == content_type
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == pillow_format and image.size == (32, 32)
                pixels = np.asarray(image.convert("RGB")).astype(int)
            if fmt == "png":  # lossless: the very pixels the predictor returned
                assert np.array_equal(pixels, wanted)
            else:  # lossy: the same image, approximately
                assert np.abs(pixels - wanted).mean() < 20
    # PNG is the default.
    assert [name for name, _, _ in stored(harness, default)] == ["out-0.png", "out-1.png"]
    for pixels, wanted in zip(harness.output_pixels(default), expected, strict=True):
        assert np.array_equal(pixels, wanted)


def test_output_quality_sets_the_size_of_lossy_outputs(harness: Harness) -> None:
    low, high = (
        harness.submit(FAKE_MODEL, **INPUTS[0] | {"output_format": "jpg", "output_quality": quality})
        for quality in (5, 100)
    )
    harness.work()
    [(_, small, _)], [(_, large, _)] = stored(harness, low), stored(harness, high)
    assert len(small) < len(large)
