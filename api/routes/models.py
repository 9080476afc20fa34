"""Models and their versions, with the OpenAPI schema clients read inputs and outputs from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from api.catalog import render_models, search
from api.deps import BaseURL, CurrentTenant, ServicesDep
from api.errors import ProblemError
from api.openapi.versions import render_version
from models.registry import UnknownModelError, find_model
from shared.model_spec import ModelSpec
from shared.settings import Settings

router = APIRouter(prefix="/v1/models", tags=["models"])


def _spec(owner: str, name: str, settings: Settings) -> ModelSpec:
    try:
        return find_model(f"{owner}/{name}", settings)
    except UnknownModelError as exc:
        raise ProblemError(404, str(exc)) from None


@router.get("")
def list_models(_: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    return {"next": None, "previous": None, "results": render_models(services, base)}


# Replicate's search is the HTTP QUERY method with a text/plain body; OpenAPI 3.1 has no QUERY
# operation, so it is documented as GET /v1/search (which answers the same models).
@router.api_route("", methods=["QUERY"], include_in_schema=False)
async def search_models(request: Request, _: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    """``QUERY /v1/models`` (body: the query as plain text): the models matching it, best first."""
    body = await request.body()
    try:
        query = body.decode().strip()
    except UnicodeDecodeError:
        query = ""
    if not query or len(query) > 500:
        raise ProblemError(400, "body: the search query, as text/plain (1 to 500 characters)")
    specs = [spec for spec, _ in search(query, services.settings)]
    return {"next": None, "previous": None, "results": await run_in_threadpool(render_models, services, base, specs)}


@router.get("/{owner}/{name}")
def get_model(owner: str, name: str, _: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    return render_models(services, base, [_spec(owner, name, services.settings)])[0]


@router.get("/{owner}/{name}/versions")
def list_versions(owner: str, name: str, _: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """One version per model: its id changes when its schema or weights do."""
    return {
        "next": None,
        "previous": None,
        "results": [render_version(_spec(owner, name, services.settings), services.settings)],
    }


@router.get("/{owner}/{name}/versions/{version_id}")
def get_version(owner: str, name: str, version_id: str, _: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    spec = _spec(owner, name, services.settings)
    if version_id != spec.version_id(services.settings):
        raise ProblemError(404, f"version {version_id!r} of {spec.ref} not found")
    return render_version(spec, services.settings)
