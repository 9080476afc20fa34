"""What every model's input schema is built from: strict fields, image-URI inputs, scheduler names.

Each model declares its inputs in its own folder (``models/<name>/schema.py``) from these pieces;
like everything in ``shared/`` they import without torch, so the API can validate inputs.
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, WithJsonSchema

from shared.images import ImageInputError, check_uri_scheme, decode_data_uri, inspect_image
from shared.settings import Settings


class InputLimits(BaseModel):
    """Bounds applied while validating inputs, passed as validation context (``{"limits": ...}``)."""

    max_bytes: int
    max_pixels: int
    # Largest output side a request may ask for.
    max_side: int

    @classmethod
    def from_settings(cls, settings: Settings) -> InputLimits:
        return cls(max_bytes=settings.image_fetch_max_bytes, max_pixels=settings.image_max_pixels,
                   max_side=settings.max_image_side)


def _validate_image_uri(value: str, info: ValidationInfo) -> str:
    """Data URIs are decoded and their header checked when ``limits`` are in the context; a
    ``checked_images`` set there (one request's) skips URIs already found good in that request."""
    context = info.context or {}
    try:
        scheme = check_uri_scheme(value)
        limits = context.get("limits")
        checked = context.get("checked_images")
        if scheme == "data" and limits is not None and (checked is None or value not in checked):
            inspect_image(decode_data_uri(value, limits.max_bytes), limits.max_pixels)
            if checked is not None:
                checked.add(value)
    except ImageInputError as exc:
        raise ValueError(str(exc)) from None
    return value


ImageURI = Annotated[
    str,
    AfterValidator(_validate_image_uri),
    WithJsonSchema({"type": "string", "format": "uri"}),
]
"""An image input: an http(s) URL or a data URI (checked to be a bounded, allowed image)."""


class ModelInput(BaseModel):
    """Base of every model's inputs: unknown fields are refused so that typos surface as 422s."""

    model_config = ConfigDict(extra="forbid", title="Input")


# Scheduler names users pick from (Replicate's names), shared by every model's inputs. No docstring:
# it would become the enum's description in every input schema, and so change every version id.
class Scheduler(str, Enum):
    DDIM = "DDIM"
    K_EULER = "K_EULER"
    DPM_SOLVER_MULTISTEP = "DPMSolverMultistep"
    K_EULER_ANCESTRAL = "K_EULER_ANCESTRAL"
    PNDM = "PNDM"
    KLMS = "KLMS"


@cache
def image_fields(input_model: type[ModelInput]) -> tuple[str, ...]:
    """The fields that take image URIs, read off the JSON schema clients see (``format: uri``)."""

    def is_uri(schema: dict) -> bool:
        return schema.get("format") == "uri" or any(is_uri(option) for option in schema.get("anyOf", []))

    return tuple(name for name, schema in input_model.model_json_schema()["properties"].items() if is_uri(schema))
