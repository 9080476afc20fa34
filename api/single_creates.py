"""A single create once its body and its request are checked: what FastAPI's create routes
(``api.routes.predictions``) and the direct routes that serve plain creates ahead of them
(``api.routes.direct_creates``) both do next."""

from __future__ import annotations

from fastapi.responses import Response

from api.deps import CreateRequest
from api.errors import ProblemError
from api.intake.submission import create_and_respond
from api.schemas import CreatePrediction, PredictionFields
from models.registry import UnknownModelError, find_model, resolve_version
from shared.model_spec import ModelSpec

# The two single-create routes' paths.
BY_VERSION_PATH = "/v1/predictions"
BY_MODEL_PATH = "/v1/models/{owner}/{name}/predictions"


async def create_by_version(create: CreateRequest, body: CreatePrediction) -> Response:
    """``POST /v1/predictions``: the model its ``version`` names (422 for an unknown one)."""
    try:
        spec = resolve_version(body.version, create.services.settings)
    except UnknownModelError as exc:
        raise ProblemError(422, f"version: {exc}") from None
    return await _create(create, spec, body)


async def create_by_model(create: CreateRequest, owner: str, name: str, body: PredictionFields) -> Response:
    """``POST /v1/models/{owner}/{name}/predictions``: the model its path names (404 for an unknown one)."""
    try:
        spec = find_model(f"{owner}/{name}", create.services.settings)
    except UnknownModelError as exc:
        raise ProblemError(404, str(exc)) from None
    return await _create(create, spec, body)


async def _create(create: CreateRequest, spec: ModelSpec, body: PredictionFields) -> Response:
    return await create_and_respond(
        create.services,
        create.caller,
        spec,
        body,
        create.base_url,
        create.prefer,
        create.idempotency_key,
        create.cancel_after,
        priority=create.priority,
        auth=create.auth,
    )
