"""Replicate's account and catalog endpoints, from the token and Kiln's configuration: the caller's
account, the hardware, the ``kiln`` collection, search; trainings answer that Kiln does not train."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.catalog import COLLECTION_SLUG, account_of, collection_summary, query_words, render_models, search
from api.deps import BaseURL, CurrentCaller, CurrentTenant, ServicesDep
from api.errors import ProblemError

router = APIRouter(prefix="/v1", tags=["account and catalog"])

NO_TRAININGS = (
    "Kiln does not train models: it serves the models it ships (GET /v1/models). "
    "Fine-tune elsewhere and pass LoRA weights as inputs where a model takes them."
)


@router.get("/account")
def get_account(caller: CurrentCaller) -> dict[str, Any]:
    """The caller's account."""
    return account_of(caller)


@router.get("/hardware")
def list_hardware(_: CurrentTenant, services: ServicesDep) -> list[dict[str, str]]:
    """The GPUs Kiln's workers run on (``KILN_HARDWARE``); a deployment names one of these SKUs."""
    return [hardware.model_dump() for hardware in services.settings.hardware]


@router.get("/collections")
def list_collections(_: CurrentTenant) -> dict[str, Any]:
    return {"next": None, "previous": None, "results": [collection_summary()]}


@router.get("/collections/{slug}")
def get_collection(slug: str, _: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    if slug != COLLECTION_SLUG:
        raise ProblemError(404, f"collection {slug!r} not found; Kiln has one, {COLLECTION_SLUG!r}")
    return collection_summary() | {"models": render_models(services, base)}


@router.get("/search")
def search_everything(
    _: CurrentTenant,
    services: ServicesDep,
    base: BaseURL,
    query: Annotated[
        str, Query(min_length=1, max_length=500, description="Words to find in model names and descriptions.")
    ],
) -> dict[str, Any]:
    """Models matching every word of ``query`` (with a score), and the collection when it matches too."""
    found = search(query, services.settings)
    models = render_models(services, base, [spec for spec, _ in found])
    words = query_words(query)
    summary = collection_summary()
    collection_text = f"{summary['slug']} {summary['name']} {summary['description']}".lower()
    return {
        "query": query,
        "models": [
            {"model": model, "metadata": {"score": score, "tags": []}}
            for model, (_, score) in zip(models, found, strict=True)
        ],
        "collections": [summary] if all(word in collection_text for word in words) else [],
        "next": None,
    }


@router.api_route("/trainings{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
@router.api_route(
    "/models/{owner}/{name}/versions/{version_id}/trainings",
    methods=["GET", "POST"],
    include_in_schema=False,
)
def trainings(_: CurrentTenant) -> None:
    raise ProblemError(404, NO_TRAININGS)
