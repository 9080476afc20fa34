"""Webhooks: the caller's own signing secret (to verify deliveries) and its rotation; and, as Kiln
extensions, the delivery log: each prediction's and batch's messages with their attempts, the
caller's failed messages, and sending them again (``api.views.webhook_deliveries``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.deps import BaseURL, CurrentTenant, ServicesDep
from api.intake.body_limit import BoundedJSONRoute
from api.pagination import Cursor, CursorQuery, page_links
from api.schemas import RetryDeliveries
from api.views.webhook_deliveries import (
    FailedFilter,
    batch_deliveries,
    delivery_document,
    failed_page,
    prediction_deliveries,
    retry_failed,
    retry_one,
)
from shared.predictions.record import format_timestamp
from shared.webhooks.secrets import TenantSecret

router = APIRouter(prefix="/v1", tags=["webhooks"], route_class=BoundedJSONRoute)

StateQuery = Annotated[
    str | None,
    Query(
        description="Which messages: `failed` (the one state listed, the default).",
        json_schema_extra={"enum": ["failed"]},
    ),
]
SinceQuery = Annotated[str | None, Query(description="ISO 8601: only messages that failed at or after it.")]
UntilQuery = Annotated[str | None, Query(description="ISO 8601: only messages that failed before it.")]


def _secret_document(secret: TenantSecret) -> dict[str, Any]:
    document: dict[str, Any] = {"key": secret.current}
    if secret.previous_active() and secret.previous_until is not None:
        # Kiln extension: until then deliveries also carry a signature made with the previous key.
        document["previous_key_expires_at"] = format_timestamp(datetime.fromtimestamp(secret.previous_until, UTC))
    return document


@router.get("/webhooks/default/secret")
def default_secret(tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """``{"key": "whsec_..."}``: the caller's own secret; verify the ``webhook-signature`` header with it
    (Standard Webhooks). No other token's deliveries are signed with it."""
    return _secret_document(services.webhook_secrets.get(tenant))


@router.post("/webhooks/default/secret/rotate")
def rotate_secret(tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """Kiln extension: a new secret for the caller. For ``KILN_WEBHOOK_SECRET_OVERLAP_S`` (24 h by
    default) every delivery carries signatures made with both the new and the previous secret, so a
    receiver can switch to the new one without rejecting any event."""
    return _secret_document(services.webhook_secrets.rotate(tenant))


@router.get("/predictions/{prediction_id}/webhooks")
def list_prediction_webhooks(prediction_id: str, tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """Kiln extension: every webhook message of the prediction (each event), oldest first, as
    ``{"results": [...]}``: ``id`` (its ``webhook-id`` header), ``event``, ``state`` (``pending``,
    ``delivered``, ``failed``), ``url``, ``created_at``, ``next_attempt_at`` (pending only) and
    ``attempts`` (``at``, ``status_code`` or ``error``, ``duration_ms``; the latest 50). Kept as long as
    the prediction's record."""
    return {"results": prediction_deliveries(services, tenant, prediction_id)}


@router.get("/batches/{batch_id}/webhooks")
def list_batch_webhooks(batch_id: str, tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """Kiln extension: the batch's one webhook message (its ``completed`` event) once the batch ended,
    shaped as a prediction's (``GET /v1/predictions/{id}/webhooks``)."""
    return {"results": batch_deliveries(services, tenant, batch_id)}


@router.get("/webhooks/deliveries")
def list_failed_deliveries(
    tenant: CurrentTenant,
    services: ServicesDep,
    base: BaseURL,
    cursor: CursorQuery = None,
    state: StateQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
) -> dict[str, Any]:
    """Kiln extension: the caller's ``completed`` messages (predictions' and batches') that failed: their
    attempts ran out (``KILN_WEBHOOK_RETRY_SCHEDULE_S``), the receiver answered 410, or the URL was
    refused. Newest failure first, in cursor pages like ``GET /v1/predictions``; ``since`` and ``until``
    bound when they failed. A message leaves the list when it is sent again, or its record expires."""
    filters = FailedFilter.parse(state, since, until)
    page = failed_page(services, tenant, Cursor.decode(cursor), filters)
    older = None if page.older_than is None else str(page.older_than)
    newer = None if page.newer_than is None else str(page.newer_than)
    links = page_links(f"{base}/v1/webhooks/deliveries", filters.as_query(), older, newer)
    return links | {"results": [delivery_document(sent) for sent in page.results]}


@router.post("/webhooks/deliveries/{webhook_id}/retry", status_code=202)
def retry_delivery(webhook_id: str, tenant: CurrentTenant, services: ServicesDep) -> JSONResponse:
    """Kiln extension: send a delivered or failed ``completed`` message once more, now, under the same
    ``webhook-id``: its body is the prediction (or batch) as it is now, with output URLs and signature
    made afresh. One attempt, appended to its ``attempts``; failing, it is listed as failed again. 202
    with the message, ``pending``. 409 while it is pending already (its next attempt is scheduled), and
    for ``start``/``output``/``logs`` messages (their ``completed`` message superseded them)."""
    return JSONResponse(retry_one(services, tenant, webhook_id), status_code=202)


@router.post("/webhooks/deliveries/retry", status_code=202)
def retry_deliveries(body: RetryDeliveries, tenant: CurrentTenant, services: ServicesDep) -> dict[str, int]:
    """Kiln extension: send the caller's failed messages (``{"state": "failed", "since"?, "until"?}``, as
    ``GET /v1/webhooks/deliveries`` filters them) again, as one retry each does, oldest failure first,
    at most 1,000 per call: ``{"retried": n, "remaining": m}`` (call again while ``remaining`` is not 0)."""
    filters = FailedFilter.parse(body.state, body.since, body.until, status=422)
    return retry_failed(services, tenant, filters)
