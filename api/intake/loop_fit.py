"""Which single creates are validated on the event loop rather than on an intake thread (``api.lanes``).

The hop to an intake thread and back (and the thread winning the GIL from the busy loop) cost a small
create a fifth of its throughput. It protects the loop from work that blocks or runs long: a fetched
image URL, an uploaded file read from S3, a webhook's DNS lookup, an Idempotency-Key claimed in Redis,
a large image decoded. A create with none of them does a bounded, small amount of CPU: its input
validated, and its few small data-URI images (each within ``KILN_INLINE_INPUT_MAX_BYTES``, so nothing is
stored in S3, and with at most ``ON_LOOP_MAX_PIXELS`` pixels together by their headers) decoded. That one is
validated where it was parsed; every other create still goes through its token's intake lane.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from api.intake.image_staging import RequestImages, SeenImage
from api.schemas import PredictionFields
from shared.inputs.images import ImageInputError, check_image, decode_data_uri
from shared.inputs.safetensors_files import file_inputs
from shared.model_spec import ModelSpec
from shared.settings import Settings

# The data URIs one create may carry and still be validated on the loop, all together.
ON_LOOP_MAX_DATA_URI_BYTES = 64 * 1024
# The most pixels its images may have together (by their headers): two 256x256 images, decoded and checked
# in about 2 ms on a loaded 2-core box (a 512x512 one took 2-3.5 ms, whatever its format).
ON_LOOP_MAX_PIXELS = 2 * 256 * 256


def loop_checked_images(
    spec: ModelSpec, body: PredictionFields, idempotency_key: str | None, priority: str, settings: Settings
) -> RequestImages | None:
    """The data-URI images of a create that does no I/O and little CPU before its store (see the module),
    each decoded and checked as staging checks it (``check_image``, its header first: within the pixels
    left, so none past the bound is decoded), so that neither the input schema nor staging opens it again;
    None for any other create: a low one, or one with an Idempotency-Key, a webhook, a file input, a
    URL-like string that is not a small data URI, or an image that fails its check (its intake thread
    answers why)."""
    if idempotency_key is not None or priority == "low" or body.priority == "low":
        return None
    if body.webhook is not None or body.webhook_completed is not None or file_inputs(spec.input_model, body.input):
        return None
    budget, pixels = ON_LOOP_MAX_DATA_URI_BYTES, ON_LOOP_MAX_PIXELS
    images = RequestImages()
    for text in _strings(body.input):
        if "://" in text:  # an image URL, an uploaded file's URL
            return None
        if text[:5].lower() != "data:" or text in images.seen:
            continue
        budget -= len(text)
        if len(text) > settings.inline_input_max_bytes or budget < 0:
            return None
        try:
            data = decode_data_uri(text, settings.image_fetch_max_bytes)
            checked = check_image(data, min(pixels, settings.image_max_pixels))
        except ImageInputError:
            return None
        pixels -= checked.width * checked.height
        images.checked.add(text)
        images.seen[text] = SeenImage(checked)
    return images


def _strings(value: Any) -> Iterator[str]:
    """Every string (values and keys) inside JSON ``value``."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
