"""Model versions as Replicate describes them: an OpenAPI document whose ``components.schemas``
holds ``Input`` and ``Output``, generated from the same input schema the API validates with."""

from __future__ import annotations

from functools import cache
from typing import Any

from shared.inputs.schema import ModelInput
from shared.model_spec import ModelSpec
from shared.settings import Settings

COG_VERSION = "kiln-0.1.0"
# Versions are content hashes; this date only fills the field clients expect.
VERSION_CREATED_AT = "2026-11-23T00:00:00.000000Z"
OUTPUT_SCHEMA = {"type": "array", "items": {"type": "string", "format": "uri"}, "title": "Output"}


@cache
def _input_components(input_model: type[ModelInput]) -> dict[str, Any]:
    schema = input_model.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = schema.pop("$defs", {})
    return {"Input": schema, **definitions}


def openapi_schema(spec: ModelSpec) -> dict[str, Any]:
    return {
        "openapi": "3.0.2",
        "info": {"title": spec.ref, "version": "1.0.0", "description": spec.described},
        "paths": {},
        "components": {"schemas": {**_input_components(spec.input_model), "Output": OUTPUT_SCHEMA}},
    }


def render_version(spec: ModelSpec, settings: Settings) -> dict[str, Any]:
    return {
        "id": spec.version_id(settings),
        "created_at": VERSION_CREATED_AT,
        "cog_version": COG_VERSION,
        "openapi_schema": openapi_schema(spec),
    }


def render_model(spec: ModelSpec, settings: Settings, base_url: str, run_count: int) -> dict[str, Any]:
    return {
        "url": f"{base_url}/v1/models/{spec.ref}",
        "owner": spec.owner,
        "name": spec.name,
        "description": spec.described,
        "visibility": "public",
        "github_url": None,
        "paper_url": None,
        "license_url": None,
        "cover_image_url": None,
        "default_example": None,
        "run_count": run_count,
        "latest_version": render_version(spec, settings),
    }
