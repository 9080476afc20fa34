"""Checking a prediction's input against its model's schema at submission, so that bad input is a
4xx now, not a failure later. Every image is then decoded and stored by ``api.intake.image_staging``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic import ValidationError

from api.errors import ProblemError, input_validation_problem
from api.services import Services
from shared.inputs.schema import InputLimits, image_inputs
from shared.model_spec import ModelSpec
from shared.storage.files import file_id_from_url


class CheckedInput(NamedTuple):
    """An input as stored (the fields the client set), and its image inputs (``image_inputs``) as found."""

    stored: dict[str, Any]
    images: list[tuple[str, str]]


def check_input(
    spec: ModelSpec,
    raw: dict[str, Any],
    services: Services,
    tenant: str,
    base_url: str,
    checked_images: set[str] | None = None,
) -> CheckedInput:
    """Validate against the model's schema; return the input as stored (the fields the client set) and
    its image inputs as found (``image_inputs``), for staging (``stage_images``) not to walk it again.

    ``checked_images``, shared by the items of one batch, holds the data-URI images already found
    good, so a reference image repeated across a batch is decoded and checked once."""
    context = {"limits": InputLimits.from_settings(services.settings), "checked_images": checked_images}
    try:
        parsed = spec.input_model.model_validate(raw, context=context)
    except ValidationError as exc:
        raise input_validation_problem(exc, prefix=("input",)) from None
    stored = parsed.model_dump(mode="json", exclude_unset=True)
    images = image_inputs(spec.input_model, stored)
    for where, uri in images:
        file_id = file_id_from_url(uri, base_url)
        if file_id is not None and services.files.get(file_id, tenant) is None:
            raise ProblemError(422, f"input.{where}: file {file_id} does not exist or has expired")
    return CheckedInput(stored, images)
