"""Checking a prediction's input at submission, so that bad input is a 4xx now, not a failure later.

Image URLs are fetched here, through the SSRF guard and within the size and time bounds, checked
to be images, and kept in S3 with the prediction; the worker reads them from there. Every image
URI of the input counts, wherever its schema puts it (``shared.input_schema.image_inputs``: lists
of images and nested objects included).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from api.errors import ProblemError, input_validation_problem
from api.services import Services
from shared.files import file_id_from_url
from shared.images import ImageInputError, check_uri_scheme, fetch_url, inspect_image
from shared.input_schema import InputLimits, image_inputs
from shared.model_spec import ModelSpec
from shared.objects import input_key


def validate_input(
    spec: ModelSpec,
    raw: dict[str, Any],
    services: Services,
    tenant: str,
    base_url: str,
    checked_images: set[str] | None = None,
) -> dict[str, Any]:
    """Validate against the model's schema; return the input as stored (the fields the client set).

    ``checked_images``, shared by the items of one batch, holds the data-URI images already found
    good, so a reference image repeated across a batch is decoded and checked once."""
    context = {"limits": InputLimits.from_settings(services.settings), "checked_images": checked_images}
    try:
        parsed = spec.input_model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise input_validation_problem(exc, prefix=("input",)) from None
    stored = parsed.model_dump(mode="json", exclude_unset=True)
    for where, uri in image_inputs(spec.input_model, stored):
        file_id = file_id_from_url(uri, base_url)
        if file_id is not None and services.files.get(file_id, tenant) is None:
            raise ProblemError(422, f"input.{where}: file {file_id} does not exist or has expired")
    return stored


def remote_image_urls(spec: ModelSpec, inputs: dict[str, Any], base_url: str) -> dict[str, str]:
    """Image inputs holding http(s) URLs other than our own files: where (``input_image``,
    ``references.1``) -> URL, each URL once."""
    remote: dict[str, str] = {}
    for where, uri in image_inputs(spec.input_model, inputs):
        if check_uri_scheme(uri) != "data" and file_id_from_url(uri, base_url) is None and uri not in remote.values():
            remote[where] = uri
    return remote


def stage_remote_images(
    spec: ModelSpec, inputs: dict[str, Any], services: Services, prediction_id: str, base_url: str
) -> dict[str, str]:
    """Fetch each remote image input, check it, and store it; returns URL -> storage key (the worker's
    ``Prediction.input_files``)."""
    settings = services.settings
    staged: dict[str, str] = {}
    for where, url in remote_image_urls(spec, inputs, base_url).items():
        try:
            data = fetch_url(
                url,
                timeout_s=settings.image_fetch_timeout_s,
                max_bytes=settings.image_fetch_max_bytes,
                allow_private=settings.image_fetch_allow_private,
                max_redirects=settings.image_fetch_max_redirects,
            )
            inspect_image(data, settings.image_max_pixels)
        except ImageInputError as exc:
            raise ProblemError(422, f"input.{where}: {exc}") from None
        key = input_key(prediction_id, where)
        services.storage.put_bytes(key, data, "application/octet-stream")
        staged[url] = key
    return staged
