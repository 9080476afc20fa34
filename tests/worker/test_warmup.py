"""Compile warm-up: every size bucket at batch 1 and the max batch is compiled before the first job,
so a job at a bucket size runs on graphs that already exist (torch.compile's "eager" backend keeps
this fast on the CPU; what it traces is what inductor would compile)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from models.kit.tuning import Tuning
from models.registry import find_model
from shared.inputs.schema import InputLimits, image_inputs
from tests.support.nested_images import ListOfImagesInput, NestedImagesInput
from worker import compile_cache
from worker.predictor_pool import PredictorPool
from worker.warmup import WarmupContext, synthetic_input, wants_warmup, warm_up, warmup_image, warmup_input

MODEL = "kiln/sd2-depth2img"
BUCKETS = ((64, 64), (128, 64))


@pytest.fixture
def compiled(make_settings):
    torch._dynamo.reset()
    settings = make_settings(
        torch_compile=True, compile_backend="eager", size_buckets="64x64,128x64", max_batch_size=2, prefetch=False
    )
    pool = PredictorPool(settings)
    pool.get(find_model(MODEL))
    yield settings, pool
    torch._dynamo.reset()


def graphs() -> int:
    """Graphs torch.compile has built so far in this process."""
    return counters["stats"]["unique_graphs"]


def test_warm_up_runs_every_bucket_and_batch_size_then_a_job_compiles_nothing_new(compiled):
    settings, pool = compiled
    tuning = Tuning.from_settings(settings)
    assert wants_warmup(settings)
    before = graphs()

    ran = warm_up(pool, tuning, settings)

    assert ran == [(MODEL, size, batch) for size in BUCKETS for batch in (1, 2)]
    compiled_graphs = graphs()
    assert compiled_graphs > before, "warm-up traced nothing: the UNet is not compiled"

    # A job at a bucket size, with another prompt, seed and step count, reuses the warmed graphs.
    predictor = pool.get(find_model(MODEL))
    inputs = find_model(MODEL).input_model.model_validate(
        warmup_input(MODEL, (128, 64)) | {"prompt": "a kiln", "seed": 7, "num_inference_steps": 3}
    )
    ctx = WarmupContext(settings)
    job = predictor.prepare(inputs, ctx)
    [outputs] = predictor.generate([job], ctx.step_callback())
    assert job.image.size == (128, 64) and outputs[0].size == (128, 64)
    assert graphs() == compiled_graphs


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


def test_warm_up_loads_the_compile_cache_first_and_saves_it_after(compiled, monkeypatch, tmp_path):
    settings, pool = compiled
    settings = settings.model_copy(update={"compile_cache_dir": tmp_path})
    events: list[tuple[str, object]] = []
    monkeypatch.setattr(compile_cache, "load", lambda directory, key: events.append(("load", key)) or 0)
    monkeypatch.setattr(compile_cache, "save", lambda directory, key: events.append(("save", key)) or 0)
    predictor = pool.get(find_model(MODEL))
    generate = predictor.generate
    monkeypatch.setattr(
        predictor, "generate", lambda jobs, callback: events.append(("generate", len(jobs))) or generate(jobs, callback)
    )

    warm_up(pool, Tuning.from_settings(settings), settings)

    assert [event for event, _ in events] == ["load", *["generate"] * 4, "save"]
    key = events[0][1]
    assert events[-1][1] == key and key.models == (MODEL,)
    assert key.shapes == ("64x64@1", "64x64@2", "128x64@1", "128x64@2") and key.compile == "eager:max-autotune"


def test_without_a_cache_dir_warm_up_neither_loads_nor_saves(compiled, monkeypatch):
    settings, pool = compiled
    monkeypatch.setattr(compile_cache, "load", lambda directory, key: pytest.fail("loaded"))
    monkeypatch.setattr(compile_cache, "save", lambda directory, key: pytest.fail("saved"))
    assert len(warm_up(pool, Tuning.from_settings(settings), settings)) == 4
