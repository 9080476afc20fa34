"""Predictions: create, get, list, cancel, stream, and their output files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.deps import (
    CHALLENGE,
    CREATE_HEADER_PARAMETERS,
    BaseURL,
    CancelAfter,
    CreateRequestDep,
    CurrentCaller,
    CurrentTenant,
    HeaderPriority,
    IdempotencyKey,
    OptionalCaller,
    OptionalTenant,
    ServicesDep,
    take_rate_limit,
)
from api.errors import ProblemError
from api.intake.body_limit import BoundedJSONRoute
from api.intake.image_staging import is_stored_name
from api.intake.inline_batch import submit_batch
from api.pagination import Cursor, CursorQuery, page_links
from api.schemas import CreateBatch, CreatePrediction, PredictionFields
from api.services import Services
from api.signed_access import signed_or_owned, stream_stored
from api.single_creates import BY_MODEL_PATH, BY_VERSION_PATH, create_by_model, create_by_version
from api.streams.sse import BadEventId, EventIds, Position, StreamContext, prediction_events
from api.views.prediction_list import PredictionFilter, list_page
from shared.predictions.client_json import input_path, output_path, stream_path
from shared.predictions.record import Prediction
from shared.predictions.store import PredictionStore
from shared.security.signed_urls import Verdict
from shared.storage.objects import input_key, output_key

router = APIRouter(prefix="/v1", tags=["predictions"], route_class=BoundedJSONRoute)


def _owned(store: PredictionStore, prediction_id: str, tenant: str) -> Prediction:
    """The tenant's prediction; another tenant's looks exactly like a missing one."""
    prediction = store.get(prediction_id)
    if prediction is None or prediction.tenant != tenant:
        raise ProblemError(404, f"prediction {prediction_id!r} not found")
    return prediction


def _render(prediction: Prediction, base: str, services: Services) -> dict[str, Any]:
    return services.render(prediction, base)


# A plain request to either create route is served by ``api.routes.direct_creates`` ahead of it, which then
# calls the same ``create_by_version`` or ``create_by_model``.
@router.post(
    BY_VERSION_PATH.removeprefix(router.prefix),
    status_code=201,
    openapi_extra={"parameters": CREATE_HEADER_PARAMETERS},
)
async def create_prediction(body: CreatePrediction, create: CreateRequestDep) -> Response:
    return await create_by_version(create, body)


@router.post(
    BY_MODEL_PATH.removeprefix(router.prefix),
    status_code=201,
    openapi_extra={"parameters": CREATE_HEADER_PARAMETERS},
)
async def create_model_prediction(owner: str, name: str, body: PredictionFields, create: CreateRequestDep) -> Response:
    return await create_by_model(create, owner, name, body)


@router.post("/predictions/batch")
async def create_batch(
    body: CreateBatch,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    idempotency_key: IdempotencyKey = None,
    priority: HeaderPriority = None,
    cancel_after: CancelAfter = None,
) -> Response:
    """Up to ``KILN_BATCH_MAX_ITEMS`` creates; ``results`` holds, in order, each prediction or its problem.
    ``Cancel-After`` sets every item's deadline, as it sets a single create's."""
    results, created = await services.intake.run(
        caller.tenant,
        submit_batch,
        services,
        caller.tenant,
        body.predictions,
        base,
        idempotency_key,
        caller.max_queued,
        body.priority or priority or "normal",
        cancel_after,
    )
    # orjson: encoding a thousand predictions with the stdlib encoder cost more than storing them.
    return Response(
        orjson.dumps({"results": results}),
        media_type="application/json",
        headers={} if created else {"Idempotent-Replayed": "true"},
    )


@router.get("/predictions")
def list_predictions(
    tenant: CurrentTenant,
    services: ServicesDep,
    base: BaseURL,
    cursor: CursorQuery = None,
    created_after: Annotated[str | None, Query(description="ISO 8601: only predictions created after it.")] = None,
    created_before: Annotated[str | None, Query(description="ISO 8601: only predictions created before it.")] = None,
    source: Annotated[
        str | None, Query(description="How they were created.", json_schema_extra={"enum": ["api", "web"]})
    ] = None,
) -> dict[str, Any]:
    """Newest first, in pages of ``predictions_page_size`` with absolute ``next``/``previous`` URLs;
    bad filters are a 400 naming the parameter."""
    filters = PredictionFilter.parse(created_after, created_before, source)
    page = list_page(services.store, tenant, Cursor.decode(cursor), services.settings.predictions_page_size, filters)
    links = page_links(f"{base}/v1/predictions", filters.as_query(), page.older_than, page.newer_than)
    return links | {"results": services.render_many(page.results, base)}


@router.get("/predictions/{prediction_id}")
def get_prediction(prediction_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    return _render(_owned(services.store, prediction_id, tenant), base, services)


@router.post("/predictions/{prediction_id}/cancel")
def cancel_prediction(
    prediction_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL
) -> dict[str, Any]:
    """Cooperative: a queued prediction ends ``canceled`` now; a running one within one denoising step."""
    # A queued one never reached a worker, so the API ends it (retention, metrics, webhook).
    services.lifecycle.cancel(_owned(services.store, prediction_id, tenant))
    return _render(_owned(services.store, prediction_id, tenant), base, services)


@router.delete(
    "/predictions/{prediction_id}",
    response_description="The prediction, its data removed (`data_removed: true`); the same again for a repeat.",
    responses={
        404: {"description": "No such prediction of this token's."},
        409: {"description": "The prediction is still queued or running: cancel it first."},
    },
)
async def delete_prediction_data(
    prediction_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL
) -> dict[str, Any]:
    """Kiln extension: delete an ended prediction's data now, as retention would later: every stored
    object of it (inputs, outputs), its input, output and logs. The record (status, timestamps,
    metrics, error) stays until ``KILN_RECORD_RETENTION_S``, showing ``data_removed: true``."""
    # It waits for S3: on a storage lane of the token's.
    return await services.storage_lanes.run(tenant, _delete_data, prediction_id, tenant, services, base)


def _delete_data(prediction_id: str, tenant: str, services: Services, base: str) -> dict[str, Any]:
    prediction = _owned(services.store, prediction_id, tenant)
    if not prediction.status.is_terminal():
        raise ProblemError(
            409,
            f"prediction {prediction_id!r} is still {prediction.status.value}: cancel it first "
            f"(POST /v1/predictions/{prediction_id}/cancel), then delete its data once it has ended",
        )
    if not prediction.data_removed:
        services.data_removal.remove([prediction.id])
    return _render(_owned(services.store, prediction_id, tenant), base, services)


async def _stream_access(
    request: Request, prediction_id: str, caller: OptionalCaller, services: ServicesDep
) -> Prediction:
    """The prediction a stream may follow: through its signed ``urls.stream`` (no token needed, as on
    Replicate, whose JavaScript client fetches it without one) or with the owner's token. Checked as a
    dependency: once the event stream has started, a 4xx can no longer be sent."""
    query = request.query_params
    path = stream_path(prediction_id)
    verdict = services.url_signer.check(path, expires=query.get("expires"), sig=query.get("sig"))
    if verdict is Verdict.EXPIRED and caller is None:
        raise ProblemError(
            403, "this signed stream URL expired; GET the prediction for a fresh urls.stream, or send the owner's token"
        )
    tenant = None  # a valid signature grants the stream whoever asks
    if verdict is not Verdict.VALID:
        if caller is None:
            raise ProblemError(401, "missing credentials: send 'Authorization: Bearer <token>'", headers=CHALLENGE)
        await take_rate_limit(request, services, caller)
        tenant = caller.tenant
    prediction = await run_in_threadpool(services.store.get, prediction_id)
    if prediction is None or (tenant is not None and prediction.tenant != tenant):
        raise ProblemError(404, f"prediction {prediction_id!r} not found")
    return prediction


async def _resume_position(
    prediction_id: str,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Position:
    """Where the stream resumes: after ``Last-Event-ID``, which must be an id sent for this prediction."""
    try:
        return EventIds(services.url_signer.secret, prediction_id).resume_after(last_event_id)
    except BadEventId as exc:
        raise ProblemError(400, str(exc)) from None


async def _stream_slot(
    prediction: Annotated[Prediction, Depends(_stream_access)], services: ServicesDep
) -> AsyncIterator[None]:
    """One of the tenant's open-stream slots for as long as the stream is open (429 when none is free).
    A dependency, so the 429 can still be sent; it is released once the stream has ended."""
    async with services.stream_slots.hold(prediction.tenant):
        yield


@router.get("/predictions/{prediction_id}/stream", response_class=EventSourceResponse)
async def stream_prediction(
    prediction_id: str,
    _: Annotated[None, Depends(_stream_slot)],
    start: Annotated[Position, Depends(_resume_position)],
    services: ServicesDep,
    base: BaseURL,
    kiln_status: Annotated[
        bool, Query(description="Kiln extension: also send `status` events (Replicate's clients reject them).")
    ] = False,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events as Replicate sends them: ``output``, ``logs``, ``error``, then ``done``, each
    with an ``id`` (``Last-Event-ID`` resumes after it). Open with the signed ``urls.stream`` or the
    owner's token; at most ``KILN_MAX_OPEN_STREAMS_PER_TENANT`` streams and waits per token (429 beyond)."""
    context = StreamContext(
        services.async_redis, services.events, services.url_signer, services.settings.retention_s, base
    )
    async for event in prediction_events(context, prediction_id, start, with_status=kiln_status):
        yield event


@router.get("/predictions/{prediction_id}/output/{name}")
async def download_output(
    prediction_id: str,
    name: str,
    tenant: OptionalTenant,
    services: ServicesDep,
    sig: str | None = None,
    expires: str | None = None,
) -> StreamingResponse:
    """Stream an output file from S3: to its owner's token, or to anyone holding an unexpired signed URL."""
    path = output_path(prediction_id, name)
    prediction = await run_in_threadpool(signed_or_owned, services, prediction_id, path, tenant, sig, expires)
    if name not in (prediction.output or []):
        raise ProblemError(404, f"prediction {prediction_id!r} has no output {name!r}")
    missing = f"output {name!r} of prediction {prediction_id!r} is no longer stored"
    return await stream_stored(services, prediction.tenant, output_key(prediction_id, name), missing)


@router.get("/predictions/{prediction_id}/inputs/{name}")
async def download_input(
    prediction_id: str,
    name: str,
    tenant: OptionalTenant,
    services: ServicesDep,
    sig: str | None = None,
    expires: str | None = None,
) -> StreamingResponse:
    """Stream an image input stored at submission (``api.intake.image_staging``), as outputs are streamed."""
    path = input_path(prediction_id, name)
    prediction = await run_in_threadpool(signed_or_owned, services, prediction_id, path, tenant, sig, expires)
    missing = f"prediction {prediction_id!r} has no stored input {name!r}"
    if not is_stored_name(name):
        raise ProblemError(404, missing)
    return await stream_stored(services, prediction.tenant, input_key(prediction_id, name), missing)
