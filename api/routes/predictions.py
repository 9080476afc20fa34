"""Predictions: create, get, list, cancel, stream, and their output files."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api.batch import submit_batch
from api.deps import BaseURL, CurrentCaller, CurrentTenant, OptionalTenant, ServicesDep
from api.errors import ProblemError
from api.schemas import CreateBatch, CreatePrediction, PredictionFields
from api.services import Services
from api.signed_access import signed_or_owned, stream_stored
from api.streaming import StreamContext, prediction_events
from api.submission import create_and_respond
from models.registry import UnknownModelError, find_model, resolve_version
from shared.objects import input_key, output_key
from shared.prediction import Prediction
from shared.prediction_json import input_path, output_path
from shared.store import PredictionStore

router = APIRouter(prefix="/v1", tags=["predictions"])

PreferHeader = Annotated[str | None, Header(description="`wait` or `wait=N` (1-60 s): answer when finished.")]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _owned(store: PredictionStore, prediction_id: str, tenant: str) -> Prediction:
    """The tenant's prediction; another tenant's looks exactly like a missing one."""
    prediction = store.get(prediction_id)
    if prediction is None or prediction.tenant != tenant:
        raise ProblemError(404, f"prediction {prediction_id!r} not found")
    return prediction


def _render(prediction: Prediction, base: str, services: Services) -> dict[str, Any]:
    return services.render(prediction, base)


@router.post("/predictions", status_code=201)
async def create_prediction(
    body: CreatePrediction,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    try:
        spec = resolve_version(body.version, services.settings)
    except UnknownModelError as exc:
        raise ProblemError(422, f"version: {exc}") from None
    return await create_and_respond(services, caller, spec, body, base, prefer, idempotency_key)


@router.post("/models/{owner}/{name}/predictions", status_code=201)
async def create_model_prediction(
    owner: str,
    name: str,
    body: PredictionFields,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    try:
        spec = find_model(f"{owner}/{name}")
    except UnknownModelError as exc:
        raise ProblemError(404, str(exc)) from None
    return await create_and_respond(services, caller, spec, body, base, prefer, idempotency_key)


@router.post("/predictions/batch")
async def create_batch(
    body: CreateBatch,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Up to ``KILN_BATCH_MAX_ITEMS`` creates; ``results`` holds, in order, each prediction or its problem."""
    results, created = await run_in_threadpool(
        submit_batch, services, caller.tenant, body.predictions, base, idempotency_key, caller.max_queued
    )
    # orjson: encoding a thousand predictions with the stdlib encoder cost more than storing them.
    return Response(
        orjson.dumps({"results": results}),
        media_type="application/json",
        headers={} if created else {"Idempotent-Replayed": "true"},
    )


def _encode_cursor(direction: str, prediction_id: str) -> str:
    return base64.urlsafe_b64encode(f"{direction}:{prediction_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        direction, _, prediction_id = (
            base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().partition(":")
        )
    except (binascii.Error, ValueError):  # not base64 (non-ASCII included), or not UTF-8 inside
        direction, prediction_id = "", ""
    if direction not in {"before", "after"} or not (prediction_id.isascii() and prediction_id.isalnum()):
        raise ProblemError(400, "cursor: not a cursor this API returned")
    return direction, prediction_id


@router.get("/predictions")
def list_predictions(
    tenant: CurrentTenant, services: ServicesDep, base: BaseURL, cursor: str | None = Query(default=None)
) -> dict[str, Any]:
    """Newest first, in pages of ``predictions_page_size`` with absolute ``next``/``previous`` URLs."""
    direction, bound = _decode_cursor(cursor) if cursor else ("before", None)
    page, more = services.store.list_for_tenant(
        tenant,
        before=bound if direction == "before" else None,
        after=bound if direction == "after" else None,
        limit=services.settings.predictions_page_size,
    )
    older = more if direction == "before" else bool(page)
    newer = more if direction == "after" else bool(page and bound)
    list_url = f"{base}/v1/predictions"
    return {
        "next": f"{list_url}?cursor={_encode_cursor('before', page[-1].id)}" if older and page else None,
        "previous": f"{list_url}?cursor={_encode_cursor('after', page[0].id)}" if newer and page else None,
        "results": [_render(p, base, services) for p in page],
    }


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


async def _owned_before_streaming(prediction_id: str, tenant: CurrentTenant, services: ServicesDep) -> Prediction:
    """Checked as a dependency: once the event stream has started, a 404 can no longer be sent."""
    return await run_in_threadpool(_owned, services.store, prediction_id, tenant)


async def _stream_slot(
    prediction: Annotated[Prediction, Depends(_owned_before_streaming)], services: ServicesDep
) -> AsyncIterator[None]:
    """One of the tenant's open-stream slots for as long as the stream is open (429 when none is free).
    A dependency, so the 429 can still be sent; it is released once the stream has ended."""
    async with services.stream_slots.hold(prediction.tenant):
        yield


@router.get("/predictions/{prediction_id}/stream", response_class=EventSourceResponse)
async def stream_prediction(
    prediction_id: str,
    _: Annotated[None, Depends(_stream_slot)],
    services: ServicesDep,
    base: BaseURL,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: ``status``, ``logs`` (one line each), ``output``, ``error``, then ``done``.
    At most ``KILN_MAX_OPEN_STREAMS_PER_TENANT`` streams and waits per token (429 beyond)."""
    context = StreamContext(
        services.async_redis, services.events, services.url_signer, services.settings.retention_s, base
    )
    async for event in prediction_events(context, prediction_id):
        yield event


@router.get("/predictions/{prediction_id}/output/{name}")
def download_output(
    prediction_id: str,
    name: str,
    tenant: OptionalTenant,
    services: ServicesDep,
    sig: str | None = None,
    expires: str | None = None,
) -> StreamingResponse:
    """Stream an output file from S3: to its owner's token, or to anyone holding an unexpired signed URL."""
    prediction = signed_or_owned(services, prediction_id, output_path(prediction_id, name), tenant, sig, expires)
    if name not in (prediction.output or []):
        raise ProblemError(404, f"prediction {prediction_id!r} has no output {name!r}")
    return stream_stored(
        services,
        output_key(prediction_id, name),
        f"output {name!r} of prediction {prediction_id!r} is no longer stored",
    )


@router.get("/predictions/{prediction_id}/inputs/{name}")
def download_input(
    prediction_id: str,
    name: str,
    tenant: OptionalTenant,
    services: ServicesDep,
    sig: str | None = None,
    expires: str | None = None,
) -> StreamingResponse:
    """Stream an image input stored at submission (``api.image_staging``), as outputs are streamed."""
    signed_or_owned(services, prediction_id, input_path(prediction_id, name), tenant, sig, expires)  # or raises
    missing = f"prediction {prediction_id!r} has no stored input {name!r}"
    return stream_stored(services, input_key(prediction_id, name), missing)
