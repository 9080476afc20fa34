"""Batches (``/v1/batches``): many predictions as one object to follow, cancel and collect."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import BaseURL, CurrentCaller, CurrentTenant, HeaderPriority, IdempotencyKey, OptionalTenant, ServicesDep
from api.errors import ProblemError
from api.intake.batch_file import RawItem, create_batch, file_lines, inline_items, read_input_file
from api.intake.batch_pool import IntakePool
from api.intake.body_limit import BoundedJSONRoute
from api.intake.idempotency import await_first_request, fingerprint
from api.intake.image_staging import is_stored_name
from api.intake.submission import check_webhook, confirm_replicated, with_priority
from api.pagination import Cursor, CursorQuery, decode_offset, id_page_links, offset_page_links
from api.schemas import CreateBatchObject
from api.services import Services
from api.signed_access import grant, stream_stored
from api.views.batches import batch_predictions, cancel_batch, remove_batch_data, results_file
from shared.batches.records import Batch, render_batch
from shared.predictions.client_json import batch_input_path
from shared.predictions.record import new_id
from shared.scheduling.queues import Priority
from shared.storage.objects import batch_input_key

router = APIRouter(prefix="/v1", tags=["batches"], route_class=BoundedJSONRoute)


def _owned(services: Services, batch_id: str, tenant: str) -> Batch:
    """The tenant's batch; another tenant's looks exactly like a missing one."""
    batch = services.batches.get(batch_id)
    if batch is None or batch.tenant != tenant:
        raise ProblemError(404, f"batch {batch_id!r} not found")
    return batch


def _submit(
    services: Services,
    tenant: str,
    tenant_cap: int,
    body: CreateBatchObject,
    base: str,
    idempotency_key: str | None,
    header_priority: Priority | None = None,
) -> tuple[Batch, bool]:
    settings = services.settings
    priority = body.priority or header_priority or "normal"
    if (body.predictions is None) == (body.input_file is None):
        raise ProblemError(422, "give exactly one of predictions (create bodies) or input_file (a JSONL file's URL)")
    webhook = check_webhook(str(body.webhook) if body.webhook else None, services)
    if body.predictions is not None and len(body.predictions) > settings.batch_max_items:
        raise ProblemError(
            422,
            f"predictions: {len(body.predictions)} items, at most {settings.batch_max_items} per batch "
            "(KILN_BATCH_MAX_ITEMS); larger batches go in an input_file",
        )
    batch_id = new_id()
    if idempotency_key is not None:
        request = fingerprint("batches", with_priority(body.model_dump(mode="json", exclude_unset=True), priority))
        existing = services.idempotency.claim(
            tenant, idempotency_key, request, batch_id, lambda bid: services.batches.get(bid) is not None
        )
        if existing is not None:
            stored = _stored_by_first_request(services, existing)
            confirm_replicated(services, lambda: services.batches.get(stored.id) is not None)
            return stored, False
    with services.idempotency.released_on_failure(tenant, idempotency_key):
        if body.input_file is not None:
            data = read_input_file(services, tenant, body.input_file, base)
            lines = list(file_lines(data))
            if len(lines) > settings.batch_file_max_lines:
                raise ProblemError(
                    422,
                    f"input_file: {len(lines)} lines, at most {settings.batch_file_max_lines} "
                    "(KILN_BATCH_FILE_MAX_LINES)",
                )
            items: Iterable[RawItem] = lines
            count, source = len(lines), body.input_file
        else:
            assert body.predictions is not None  # exactly one of the two (checked above)
            items, count, source = inline_items(body.predictions), len(body.predictions), "inline"
        if count == 0:
            field = "predictions: no items" if source == "inline" else "input_file: no lines"
            raise ProblemError(422, f"{field}: a batch holds at least one create body")
        batch = create_batch(services, tenant, items, count, base, webhook, source, tenant_cap, batch_id, priority)
    confirm_replicated(services, lambda: services.batches.get(batch.id) is not None)
    return batch, True


def _stored_by_first_request(services: Services, batch_id: str) -> Batch:
    return await_first_request(lambda: services.batches.get(batch_id), "a batch")


@router.post("/batches", status_code=201)
async def create(
    request: Request,
    body: CreateBatchObject,
    caller: CurrentCaller,
    services: ServicesDep,
    base: BaseURL,
    idempotency_key: IdempotencyKey = None,
    priority: HeaderPriority = None,
) -> JSONResponse:
    """A batch of inline create bodies (``predictions``, up to ``KILN_BATCH_MAX_ITEMS``) or of the lines
    of an uploaded JSONL file (``input_file``, up to ``KILN_BATCH_FILE_MAX_LINES``). Answers once the
    items are validated and queued; refused items are reported in the results, never sink the batch."""
    if "cancel-after" in request.headers:  # not silently dropped: a client sending it means it
        raise ProblemError(
            400,
            "Cancel-After: a batch object takes none; cancel it (POST /v1/batches/{id}/cancel), or send its "
            "items to POST /v1/predictions/batch, which takes it",
        )
    cap = caller.max_queued or services.settings.max_queued_per_tenant
    args = (caller.tenant, cap, body, base, idempotency_key, priority)
    pool: IntakePool | None = getattr(request.app.state, "intake_pool", None)
    if pool is not None:  # validation is CPU-bound: in a process of its own, never this one's GIL
        batch, created = await pool.run(_submit, *args)
    else:
        batch, created = await run_in_threadpool(_submit, services, *args)
    return JSONResponse(
        render_batch(batch, base), status_code=201, headers={} if created else {"Idempotent-Replayed": "true"}
    )


@router.get("/batches")
def list_batches(
    tenant: CurrentTenant, services: ServicesDep, base: BaseURL, cursor: CursorQuery = None
) -> dict[str, Any]:
    """Newest first, in pages of ``KILN_PREDICTIONS_PAGE_SIZE`` with absolute ``next``/``previous`` URLs."""
    at = Cursor.decode(cursor)
    page, more = services.batches.list_for_tenant(
        tenant, before=at.before, after=at.after, limit=services.settings.predictions_page_size
    )
    links = id_page_links(f"{base}/v1/batches", at, [batch.id for batch in page], more)
    return links | {"results": [render_batch(b, base) for b in page]}


@router.get("/batches/{batch_id}")
def get_batch(batch_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    return render_batch(_owned(services, batch_id, tenant), base)


@router.post("/batches/{batch_id}/cancel")
def cancel(batch_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    """Every unfinished item: queued ones end ``canceled`` now, running ones at their next step."""
    cancel_batch(services, _owned(services, batch_id, tenant))
    return render_batch(_owned(services, batch_id, tenant), base)


@router.delete(
    "/batches/{batch_id}",
    response_description="The batch, its data removed (`data_removed: true`); the same again for a repeat.",
    responses={
        404: {"description": "No such batch of this token's."},
        409: {"description": "An item is still queued or running (or the batch is validating): cancel it first."},
    },
)
async def delete_data(batch_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> dict[str, Any]:
    """Kiln extension: once every item has ended, delete every item's data now (as ``DELETE
    /v1/predictions/{id}`` does for each) and the image inputs they share. The records stay (each
    item's and the batch's) until record retention, showing ``data_removed: true``."""
    # It waits for S3: on a storage lane of the token's.
    return await services.storage_lanes.run(tenant, _delete_data, batch_id, tenant, services, base)


def _delete_data(batch_id: str, tenant: str, services: Services, base: str) -> dict[str, Any]:
    remove_batch_data(services, _owned(services, batch_id, tenant))
    return render_batch(_owned(services, batch_id, tenant), base)


@router.get("/batches/{batch_id}/predictions")
def list_batch_predictions(
    batch_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL, cursor: CursorQuery = None
) -> dict[str, Any]:
    """The batch's predictions in submission order, in pages of ``KILN_PREDICTIONS_PAGE_SIZE`` items."""
    batch = _owned(services, batch_id, tenant)
    start = decode_offset(cursor)
    size = services.settings.predictions_page_size
    page, more = batch_predictions(services, batch, start, size)
    links = offset_page_links(f"{base}/v1/batches/{batch.id}/predictions", start, size, more)
    return links | {"results": services.render_many(page, base)}


@router.get("/batches/{batch_id}/results")
def results(batch_id: str, tenant: CurrentTenant, services: ServicesDep, base: BaseURL) -> StreamingResponse:
    """JSONL, one line per item in submission order: ``id``, ``status``, ``output``, ``error``,
    ``metrics`` (a refused item: its line number and problem). Streamed; readable while it runs."""
    batch = _owned(services, batch_id, tenant)
    return StreamingResponse(results_file(services, batch, base), media_type="application/jsonl")


@router.get("/batches/{batch_id}/inputs/{name}")
async def download_input(
    batch_id: str,
    name: str,
    tenant: OptionalTenant,
    services: ServicesDep,
    sig: str | None = None,
    expires: str | None = None,
) -> StreamingResponse:
    """An image input the batch's items share, stored once for the batch (``api.intake.image_staging``): to
    the batch's owner, or to anyone holding the signed URL its items' inputs show."""
    batch = await run_in_threadpool(services.batches.get, batch_id)
    owner = batch.tenant if batch else None
    path = batch_input_path(batch_id, name)
    grant(services, owner, path, tenant, sig, expires, f"batch {batch_id!r} not found")
    assert owner is not None  # granted: the batch exists
    missing = f"batch {batch_id!r} has no stored input {name!r}"
    if not is_stored_name(name):
        raise ProblemError(404, missing)
    return await stream_stored(services, owner, batch_input_key(batch_id, name), missing)
