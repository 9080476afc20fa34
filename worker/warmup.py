"""Compile warm-up at worker start: one short generation per model, size bucket and batch size.

``torch.compile`` builds a graph per input shape on first use (``dynamic=False``), and max-autotune
takes minutes per shape; a worker that compiled lazily would make its first users of each size
wait for it. With ``KILN_COMPILE_WARMUP`` (on whenever ``KILN_TORCH_COMPILE`` is) the worker runs
each model it serves once per size bucket at batch 1 and at ``KILN_MAX_BATCH_SIZE`` before it
takes a job, at both speeds where the fast mode has components (``warmup_speeds``). Batch sizes in
between still compile on first use. The synthetic inputs go through
the same validation, ``prepare()`` (detectors included) and ``generate()`` as a real prediction.
With ``KILN_COMPILE_CACHE_DIR`` the compile artifacts are loaded before the warm-up and saved after it
(``worker.compile_cache``): a worker whose cache is warm compiles little.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from PIL import Image

from models.kit.tuning import Size, Tuning
from models.registry import find_model
from shared.inputs.images import decode_data_uri, decode_image
from shared.inputs.schema import EVERY_ITEM, EVERY_VALUE, InputLimits, ModelInput, Speed, image_fields
from shared.settings import Settings
from worker import compile_cache
from worker.predictor_pool import PredictorPool

log = logging.getLogger(__name__)

# The compiled graphs do not depend on the number of steps, but a fast call's do on the kind of step: a
# refresh step and a reusing one (feature reuse) must both run, also where a strength below 1 skips the
# first steps (depth2img's default 0.8 runs 3 of 4). Four keep warm-up short.
WARMUP_STEPS = 4


def warmup_image(size: Size) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def warmup_input(model: str, size: Size) -> dict[str, Any]:
    """A valid input for ``model`` at ``size``: its structure image and every required image set."""
    return synthetic_input(find_model(model).input_model, size)


def synthetic_input(input_model: type[ModelInput], size: Size) -> dict[str, Any]:
    """An input of ``input_model`` at ``size`` with the image at every required image field, at any
    depth (a required list of images gets one), and at the optional ones the model names in its
    ``warmup_images`` (default: ``input_image``)."""
    fields = input_model.model_fields
    image = warmup_image(size)
    optional = {(name,) for name in getattr(input_model, "warmup_images", ("input_image",))}
    raw: dict[str, Any] = {name: value for name, value in (("prompt", "warm-up"), ("seed", 0)) if name in fields}
    for field in image_fields(input_model):
        if field.required or field.path in optional:
            raw = with_image_at(raw, field.path, image)
    if "num_inference_steps" in fields:
        raw["num_inference_steps"] = WARMUP_STEPS
    if "width" in fields and "height" in fields:
        raw["width"], raw["height"] = size
    return raw


def with_image_at(value: Any, path: tuple[str, ...], image: str) -> Any:
    """``value`` with ``image`` put at ``path``: objects on the way are kept or made, and a list or
    mapping on the way holds one item (key ``"0"``) with the rest of the path."""
    if not path:
        return image
    step, rest = path[0], path[1:]
    if step == EVERY_ITEM:
        return [with_image_at(value[0] if isinstance(value, list) and value else None, rest, image)]
    if step == EVERY_VALUE:
        return {"0": with_image_at(value.get("0") if isinstance(value, dict) else None, rest, image)}
    filled = dict(value) if isinstance(value, dict) else {}
    filled[step] = with_image_at(filled.get(step), rest, image)
    return filled


class WarmupContext:
    """The ``PredictContext`` of a warm-up run: no record, no logs, data-URI images only."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def log(self, line: str) -> None:
        log.debug("warm-up: %s", line)

    def load_image(self, uri: str) -> Image.Image:
        return decode_image(decode_data_uri(uri, self.settings.image_fetch_max_bytes), self.settings.image_max_pixels)

    def file_digest(self, uri: str) -> str | None:
        return None

    def load_file(self, uri: str, *, max_bytes: int, timeout_s: float) -> bytes:
        raise RuntimeError("warm-up inputs hold no file inputs")

    def step_callback(self) -> Callable[[Any, int, Any, dict], dict]:
        return lambda pipe, step, timestep, callback_kwargs: callback_kwargs


def wants_warmup(settings: Settings) -> bool:
    return settings.torch_compile if settings.compile_warmup is None else settings.compile_warmup


def warmup_speeds(predictor: Any) -> list[Speed | None]:
    """Quality and fast where the predictor's fast mode has components (a fast call runs graphs of its own:
    the reuse steps' UNet, the ControlNet on half the rows, the float8 modules); else the job as prepared."""
    fast = getattr(predictor, "fast", None)
    return [Speed.QUALITY, Speed.FAST] if fast is not None and fast.components else [None]


def at_speed(job: Any, speed: Speed | None) -> Any:
    """``job`` (a prepared job, whose ``inputs`` are its prediction's) as a prediction at ``speed``."""
    return job if speed is None else replace(job, inputs=job.inputs.model_copy(update={"speed": speed}))


def warm_up(pool: PredictorPool, tuning: Tuning, settings: Settings) -> list[tuple[Any, ...]]:
    """Run every loaded model once per bucket, batch size and speed (``warmup_speeds``); returns what ran,
    in order: (model, size, batch), with the speed after them for a fast run."""
    if not tuning.buckets:
        log.warning(
            "compile warm-up skipped: sizes are not snapped to buckets (KILN_SNAP_TO_BUCKETS), "
            "so there is no fixed set of shapes to compile ahead"
        )
        return []
    ctx = WarmupContext(settings)
    limits = InputLimits.from_settings(settings)
    batch_sizes = sorted({1, tuning.max_batch_size})
    cache_dir = settings.compile_cache_dir if tuning.compile else None
    key = compile_cache.cache_key(
        tuning.device, pool.models, tuning.buckets, batch_sizes, tuning.compile_backend, tuning.compile_mode
    )
    if cache_dir is not None:
        compile_cache.load(cache_dir, key)
    ran = []
    for model in pool.models:
        spec = find_model(model)
        predictor = pool.get(spec)
        for size in tuning.buckets:
            if hasattr(predictor, "warmup_job"):
                # A model whose inputs a synthetic image cannot make (a face that must be found) makes its own job.
                job = predictor.warmup_job(size, WARMUP_STEPS, ctx)
            else:
                inputs = spec.input_model.model_validate(warmup_input(model, size), context={"limits": limits})
                job = predictor.prepare(inputs, ctx)
            for speed, batch in itertools.product(warmup_speeds(predictor), batch_sizes):
                started = time.monotonic()
                predictor.generate([at_speed(job, speed)] * batch, ctx.step_callback())
                took = time.monotonic() - started
                shown = speed.value if speed is not None else "as prepared"
                log.info("warm-up: %s at %dx%d, batch %d, %s, in %.1f s", model, *size, batch, shown, took)
                ran.append((model, size, batch) if speed is not Speed.FAST else (model, size, batch, speed.value))
    if cache_dir is not None:
        compile_cache.save(cache_dir, key)
    return ran
