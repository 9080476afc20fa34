"""Checking a prediction's input at submission, so that bad input is a 4xx now, not a failure later.

Image URLs are fetched here, through the SSRF guard and within the size and time bounds, checked
to be images, and kept in S3 with the prediction; the worker reads them from there.
"""

from __future__ import annotations

from pydantic import ValidationError

from api.errors import ProblemError, input_validation_problem
from api.services import Services
from shared.files import file_id_from_url
from shared.images import ImageInputError, check_uri_scheme, fetch_url, inspect_image
from shared.input_schema import InputLimits, image_fields
from shared.model_spec import ModelSpec
from shared.objects import input_key


def validate_input(spec: ModelSpec, raw: dict, services: Services, tenant: str, base_url: str,
                   checked_images: set[str] | None = None) -> dict:
    """Validate against the model's schema; return the input as stored (the fields the client set).

    ``checked_images``, shared by the items of one batch, holds the data-URI images already found
    good, so a reference image repeated across a batch is decoded and checked once."""
    context = {"limits": InputLimits.from_settings(services.settings), "checked_images": checked_images}
    try:
        parsed = spec.input_model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise input_validation_problem(exc, prefix=("input",)) from None
    stored = parsed.model_dump(mode="json", exclude_unset=True)
    for field in image_fields(spec.input_model):
        file_id = file_id_from_url(stored[field], base_url) if stored.get(field) else None
        if file_id is not None and services.files.get(file_id, tenant) is None:
            raise ProblemError(422, f"input.{field}: file {file_id} does not exist or has expired")
    return stored


def remote_image_urls(spec: ModelSpec, inputs: dict, base_url: str) -> dict[str, str]:
    """Image fields holding http(s) URLs other than our own files: field -> URL."""
    return {
        field: inputs[field]
        for field in image_fields(spec.input_model)
        if inputs.get(field) and check_uri_scheme(inputs[field]) != "data"
        and file_id_from_url(inputs[field], base_url) is None
    }


def stage_remote_images(spec: ModelSpec, inputs: dict, services: Services, prediction_id: str,
                        base_url: str) -> dict[str, str]:
    """Fetch each remote image input, check it, and store it; returns URL -> storage key."""
    settings = services.settings
    staged: dict[str, str] = {}
    for field, url in remote_image_urls(spec, inputs, base_url).items():
        try:
            data = fetch_url(url, timeout_s=settings.image_fetch_timeout_s, max_bytes=settings.image_fetch_max_bytes,
                             allow_private=settings.image_fetch_allow_private,
                             max_redirects=settings.image_fetch_max_redirects)
            inspect_image(data, settings.image_max_pixels)
        except ImageInputError as exc:
            raise ProblemError(422, f"input.{field}: {exc}") from None
        key = input_key(prediction_id, field)
        services.storage.put_bytes(key, data, "application/octet-stream")
        staged[url] = key
    return staged
