"""``output_format`` and ``output_quality`` through the runner: each output stored with its format's bytes,
content type and file extension (tiny depth2img, a real redis-server, in-memory storage)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from shared.predictions.status import Status
from shared.settings import Settings
from shared.storage.objects import output_key
from tests.support.runner_harness import Harness
from tests.support.worker_inputs import FAST, INPUTS, MODEL
from worker.predictor_pool import PredictorPool

FORMATS = {
    "png": (b"\x89PNG\r\n\x1a\n", "image/png", "PNG"),
    "jpg": (b"\xff\xd8\xff", "image/jpeg", "JPEG"),
    "webp": (b"RIFF", "image/webp", "WEBP"),
}


@pytest.fixture
def harness(redis_url: str, make_settings: Callable[..., Settings], depth2img_pool: PredictorPool) -> Iterator[Harness]:
    harness = Harness(redis_url, make_settings(), depth2img_pool)
    yield harness
    harness.close()


def stored(harness: Harness, prediction_id: str) -> list[tuple[str, bytes, str]]:
    names = harness.get(prediction_id).output or []
    keys = [output_key(prediction_id, name) for name in names]
    return [
        (name, harness.storage.objects[key], harness.storage.content_types[key])
        for name, key in zip(names, keys, strict=True)
    ]


def test_each_output_format_stores_its_bytes_content_type_and_extension(harness: Harness) -> None:
    ids = {
        fmt: harness.submit(MODEL, **FAST | INPUTS[0] | {"num_outputs": 2, "output_format": fmt, "output_quality": 80})
        for fmt in FORMATS
    }
    default = harness.submit(MODEL, **FAST | INPUTS[0])
    harness.work()
    pixels = {}
    for fmt, prediction_id in ids.items():
        assert harness.get(prediction_id).status is Status.SUCCEEDED, harness.get(prediction_id).logs
        magic, content_type, pillow_format = FORMATS[fmt]
        outputs = stored(harness, prediction_id)
        assert [name for name, _, _ in outputs] == [f"out-0.{fmt}", f"out-1.{fmt}"]
        for _, data, stored_type in outputs:
            assert data.startswith(magic) and stored_type == content_type
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == pillow_format and image.size == (64, 64)
        pixels[fmt] = np.asarray(Image.open(io.BytesIO(outputs[0][1])).convert("RGB")).astype(int)
    # PNG is the default, and lossless: the same pixels as asking for it.
    assert [name for name, _, _ in stored(harness, default)] == ["out-0.png"]
    assert np.array_equal(harness.output_pixels(default)[0], pixels["png"])
    # The lossy formats are the same image, approximately.
    for fmt in ("jpg", "webp"):
        assert np.abs(pixels[fmt] - pixels["png"]).mean() < 20


def test_output_quality_sets_the_size_of_lossy_outputs(harness: Harness) -> None:
    low, high = (
        harness.submit(MODEL, **FAST | INPUTS[0] | {"output_format": "jpg", "output_quality": quality})
        for quality in (5, 100)
    )
    harness.work()
    [(_, small, _)], [(_, large, _)] = stored(harness, low), stored(harness, high)
    assert len(small) < len(large)
