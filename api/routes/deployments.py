"""Deployments (Replicate's ``/v1/deployments``): a tenant's named release pinning a model version,
and predictions made through it (``api.deployments``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Caller
from api.catalog import account_of
from api.deployments import (
    MAX_INSTANCES,
    NAME_PATTERN,
    BadConfiguration,
    Configuration,
    Deployment,
    DeploymentExists,
    DeploymentStore,
    Release,
    check_configuration,
)
from api.deps import BaseURL, CancelAfter, CurrentCaller, HeaderPriority, IdempotencyKey, PreferHeader, ServicesDep
from api.errors import ProblemError
from api.intake.body_limit import BoundedJSONRoute
from api.intake.submission import create_and_respond
from api.schemas import PredictionFields
from api.services import Services
from models.registry import UnknownModelError, find_model
from shared.model_spec import ModelSpec
from shared.predictions.record import utcnow
from shared.settings import Settings

router = APIRouter(prefix="/v1/deployments", tags=["deployments"], route_class=BoundedJSONRoute)

VERSION_PATTERN = r"^[0-9a-f]{64}$"
Instances = Annotated[int, Field(ge=0, le=MAX_INSTANCES)]


class CreateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="Lowercase letters, digits, '-', '_' and '.'.")
    model: str = Field(pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", description="owner/name of a Kiln model.")
    version: str = Field(pattern=VERSION_PATTERN, description="The model's version id (its latest_version.id).")
    hardware: str = Field(min_length=1, max_length=64, description="A SKU of GET /v1/hardware.")
    min_instances: Instances
    max_instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)]


class UpdateDeployment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    hardware: str | None = Field(default=None, min_length=1, max_length=64)
    min_instances: Instances | None = None
    max_instances: Annotated[int, Field(ge=1, le=MAX_INSTANCES)] | None = None


def _store(services: Services) -> DeploymentStore:
    return DeploymentStore(services.redis)


def _model(ref: str, settings: Settings) -> ModelSpec:
    try:
        return find_model(ref, settings)
    except UnknownModelError as exc:
        raise ProblemError(422, f"model: {exc}") from None


def _check_release(services: Services, spec: ModelSpec, version: str | None, hardware: str | None) -> None:
    """A release pins the version Kiln serves of the model, on hardware Kiln has (422 naming the field)."""
    current = spec.version_id(services.settings)
    if version is not None and version != current:
        raise ProblemError(422, f"version: Kiln serves {spec.ref} as version {current!r} only, not {version!r}")
    skus = [hardware.sku for hardware in services.settings.hardware]
    if hardware is not None and hardware not in skus:
        raise ProblemError(422, f"hardware: {hardware!r} is not one of {skus} (GET /v1/hardware, KILN_HARDWARE)")


def _owned(services: Services, caller: Caller, owner: str, name: str) -> Deployment:
    """The caller's deployment; anyone else's looks exactly like a missing one."""
    found = _store(services).get(caller.tenant, name) if owner == caller.name else None
    if found is None:
        raise ProblemError(404, f"deployment {owner}/{name} not found")
    return found


@router.post("", status_code=201)
def create_deployment(body: CreateDeployment, caller: CurrentCaller, services: ServicesDep) -> dict[str, Any]:
    spec = _model(body.model, services.settings)
    _check_release(services, spec, body.version, body.hardware)
    try:
        configuration = check_configuration(
            Configuration(hardware=body.hardware, min_instances=body.min_instances, max_instances=body.max_instances)
        )
    except BadConfiguration as exc:
        raise ProblemError(422, str(exc)) from None
    deployment = Deployment(
        owner=caller.name,
        name=body.name,
        current_release=Release(
            number=1,
            model=spec.ref,
            version=body.version,
            created_at=utcnow(),
            created_by=account_of(caller),
            configuration=configuration,
        ),
    )
    try:
        _store(services).create(caller.tenant, deployment)
    except DeploymentExists:
        raise ProblemError(409, f"deployment {deployment.ref} already exists; PATCH it for a new release") from None
    return deployment.render()


@router.get("")
def list_deployments(caller: CurrentCaller, services: ServicesDep) -> dict[str, Any]:
    """The caller's deployments, by name (one page: a tenant has few)."""
    return {"next": None, "previous": None, "results": [d.render() for d in _store(services).list(caller.tenant)]}


@router.get("/{owner}/{name}")
def get_deployment(owner: str, name: str, caller: CurrentCaller, services: ServicesDep) -> dict[str, Any]:
    return _owned(services, caller, owner, name).render()


@router.patch("/{owner}/{name}")
def update_deployment(
    owner: str, name: str, body: UpdateDeployment, caller: CurrentCaller, services: ServicesDep
) -> dict[str, Any]:
    """A new release (``number`` + 1) with the given version, hardware or instance counts."""
    changes = body.model_dump(exclude_none=True)
    if not changes:
        raise ProblemError(422, "body: give at least one of version, hardware, min_instances, max_instances")
    current = _owned(services, caller, owner, name)
    _check_release(services, _model(current.current_release.model, services.settings), body.version, body.hardware)
    try:
        updated = _store(services).release(caller.tenant, name, account_of(caller), **changes)
    except BadConfiguration as exc:
        raise ProblemError(422, str(exc)) from None
    if updated is None:
        raise ProblemError(404, f"deployment {owner}/{name} not found")
    return updated.render()


@router.delete("/{owner}/{name}", status_code=204)
def delete_deployment(owner: str, name: str, caller: CurrentCaller, services: ServicesDep) -> Response:
    """Predictions made through it keep running; new ones through it are 404s."""
    _owned(services, caller, owner, name)
    _store(services).delete(caller.tenant, name)
    return Response(status_code=204)


@router.post("/{owner}/{name}/predictions", status_code=201)
async def create_deployment_prediction(
    owner: str,
    name: str,
    body: PredictionFields,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKey = None,
    cancel_after: CancelAfter = None,
    priority: HeaderPriority = None,
) -> Response:
    """A prediction of the release's model version, on that model's queue, with ``deployment`` set."""
    deployment = await run_in_threadpool(_owned, services, caller, owner, name)
    release = deployment.current_release
    spec = find_model(release.model, services.settings)
    if release.version != spec.version_id(services.settings):
        raise ProblemError(
            409,
            f"deployment {deployment.ref} pins version {release.version!r} of {spec.ref}, which Kiln no longer "
            f"serves; PATCH it to version {spec.version_id(services.settings)!r}",
        )
    return await create_and_respond(
        services, caller, spec, body, base, prefer, idempotency_key, cancel_after, deployment.ref, priority
    )
