"""Compile warm-up: every size bucket at batch 1 and the max batch is run before the first job (the
fake model shows what runs, and the compile cache loaded before and saved after), so a job at a
bucket size runs on graphs that already exist (the tiny depth2img UNet under torch.compile's
"eager" backend, which keeps this fast on the CPU: what it traces is what inductor would compile)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from models.kit.tuning import Tuning
from models.registry import find_model
from shared.inputs.schema import InputLimits, image_inputs
from shared.settings import Settings
from tests.support.fake_predictors import FAKE_MODEL, FakePredictor
from tests.support.nested_images import ListOfImagesInput, NestedImagesInput
from worker import compile_cache
from worker.predictor_pool import PredictorPool
from worker.warmup import WarmupContext, synthetic_input, wants_warmup, warm_up, warmup_image, warmup_input

BUCKETS = ((64, 64), (128, 64))
COMPILED = {"torch_compile": True, "compile_backend": "eager", "size_buckets": "64x64,128x64", "max_batch_size": 2}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(**COMPILED)


def test_warm_up_runs_every_bucket_at_batch_one_and_the_max_batch(settings, fake_pool, fake: FakePredictor) -> None:
    assert wants_warmup(settings)
    ran = warm_up(fake_pool, Tuning.from_settings(settings), settings)
    assert ran == [(FAKE_MODEL, size, batch) for size in BUCKETS for batch in (1, 2)]
    assert [[job.size for job in batch] for batch in fake.batches] == [
        [size] * batch for size in BUCKETS for batch in (1, 2)
    ]


def test_no_warm_up_without_compile_or_buckets(make_settings):
    assert not wants_warmup(make_settings())
    assert wants_warmup(make_settings(compile_warmup=True))
    settings = make_settings(torch_compile=True, snap_to_buckets=False)
    assert warm_up(PredictorPool(settings), Tuning.from_settings(settings), settings) == []


def test_warm_up_inputs_set_every_required_image_at_any_depth():
    image = warmup_image((64, 64))
    limits = InputLimits(max_bytes=10_000_000, max_pixels=10_000_000, max_side=1024)
    nested = synthetic_input(NestedImagesInput, (64, 64))
    NestedImagesInput.model_validate(nested, context={"limits": limits})
    assert image_inputs(NestedImagesInput, nested) == [("style.image", image), ("layers.0.image", image)]
    listed = synthetic_input(ListOfImagesInput, (64, 64))
    ListOfImagesInput.model_validate(listed, context={"limits": limits})
    assert image_inputs(ListOfImagesInput, listed) == [("input_image", image), ("references.0", image)]


def test_warm_up_loads_the_compile_cache_first_and_saves_it_after(
    settings, fake_pool, fake: FakePredictor, monkeypatch, tmp_path: Path
) -> None:
    settings = settings.model_copy(update={"compile_cache_dir": tmp_path})
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(compile_cache, "load", lambda directory, key: events.append(("load", key)) or 0)
    monkeypatch.setattr(compile_cache, "save", lambda directory, key: events.append(("save", key)) or 0)
    fake.on_step = lambda step: events.append(("step", step))

    warm_up(fake_pool, Tuning.from_settings(settings), settings)

    # Each of the four runs takes the warm-up's two steps.
    assert [event for event, _ in events] == ["load", *["step"] * 8, "save"]
    key = events[0][1]
    assert events[-1][1] == key and key.models == (FAKE_MODEL,)
    assert key.shapes == ("64x64@1", "64x64@2", "128x64@1", "128x64@2") and key.compile == "eager:max-autotune"


def test_without_a_cache_dir_warm_up_neither_loads_nor_saves(settings, fake_pool, monkeypatch) -> None:
    monkeypatch.setattr(compile_cache, "load", lambda directory, key: pytest.fail("loaded"))
    monkeypatch.setattr(compile_cache, "save", lambda directory, key: pytest.fail("saved"))
    assert len(warm_up(fake_pool, Tuning.from_settings(settings), settings)) == 4


def graphs() -> int:
    """Graphs torch.compile has built so far in this process."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def compiled_depth2img(make_settings: Callable[..., Settings]):
    """The tiny depth2img predictor with its UNet compiled, one bucket and batch size (the least to compile)."""
    torch._dynamo.reset()
    settings = make_settings(**COMPILED | {"size_buckets": "64x64", "max_batch_size": 1, "prefetch": False})
    pool = PredictorPool(settings)
    pool.get(find_model("kiln/sd2-depth2img"))
    yield settings, pool
    torch._dynamo.reset()


def test_after_warm_up_a_job_at_a_bucket_size_compiles_nothing_new(compiled_depth2img) -> None:
    settings, pool = compiled_depth2img
    model = "kiln/sd2-depth2img"
    before = graphs()

    # The fast mode's components (feature reuse here) run graphs of their own: warmed too.
    ran = warm_up(pool, Tuning.from_settings(settings), settings)
    assert ran == [(model, (64, 64), 1), (model, (64, 64), 1, "fast")]

    compiled_graphs = graphs()
    assert compiled_graphs > before, "warm-up traced nothing: the UNet is not compiled"
    # A job at the bucket size, with another prompt, seed and step count, reuses the warmed graphs.
    predictor = pool.get(find_model(model))
    fields = warmup_input(model, (64, 64)) | {"prompt": "a kiln", "seed": 7, "num_inference_steps": 3}
    inputs = find_model(model).input_model.model_validate(fields)
    ctx = WarmupContext(settings)
    job = predictor.prepare(inputs, ctx)
    [outputs] = predictor.generate([job], ctx.step_callback())
    assert job.image.size == (64, 64) and outputs[0].size == (64, 64)
    assert graphs() == compiled_graphs
    # And a fast one (refresh and reuse steps).
    fast = find_model(model).input_model.model_validate(fields | {"speed": "fast", "num_inference_steps": 4})
    predictor.generate([predictor.prepare(fast, ctx)], ctx.step_callback())
    assert graphs() == compiled_graphs
