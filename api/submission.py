"""Turning a create request into a stored, enqueued prediction, and answering it."""

from __future__ import annotations

import time

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.errors import ProblemError
from api.idempotency import fingerprint
from api.inputs import stage_remote_images, validate_input
from api.lora_inputs import check_lora_inputs
from api.schemas import PredictionFields
from api.services import Services
from api.waiting import parse_prefer_wait, wait_until_terminal
from shared import queues
from shared.metrics import record_created
from shared.model_spec import ModelSpec
from shared.prediction import Prediction, new_id
from shared.prediction_json import render_prediction
from shared.queue_counters import QueueFull
from shared.ssrf import URLRefused, resolve_checked
from shared.status import Status

# How long a duplicate request waits for the first one (same Idempotency-Key) to store its prediction.
DUPLICATE_WAIT_S = 10.0
# Over a queue cap: predictions start every few seconds, so this is when room is likely.
QUEUE_FULL_RETRY_AFTER_S = 5


def check_webhook(url: str | None, services: Services) -> str | None:
    """Refuse webhook URLs the sender would refuse (SSRF guard), so the client learns it now."""
    if url is None:
        return None
    try:
        resolve_checked(url, allow_private=services.settings.webhook_allow_private)
    except URLRefused as exc:
        raise ProblemError(422, f"webhook: {exc}") from None
    return url


def prepare(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    checked_images: set[str] | None = None,
) -> Prediction:
    """Validate a create request (input, LoRA inputs, webhook, remote images) into a prediction ready to store."""
    prediction_id = new_id()
    inputs = validate_input(spec, body.input, services, tenant, base_url, checked_images)
    check_lora_inputs(spec, inputs, services, tenant, base_url, checked_images)
    webhook = check_webhook(str(body.webhook) if body.webhook else None, services)
    return Prediction(
        id=prediction_id,
        tenant=tenant,
        model=spec.ref,
        version=spec.version_id(services.settings),
        queue=spec.queue,
        input=inputs,
        input_files=stage_remote_images(spec, inputs, services, prediction_id, base_url),
        webhook=webhook,
        webhook_events_filter=list(body.webhook_events_filter) if body.webhook_events_filter is not None else None,
        base_url=base_url,
    )


def store_and_enqueue(services: Services, predictions: list[Prediction], priority: int) -> None:
    """Store predictions within the queue caps and enqueue them, in one Redis transaction: 429
    (tenant) or 503 (global cap) with nothing stored; Redis down is a 503 with nothing stored."""
    settings = services.settings

    def priority_at(position: int) -> int:
        """A batch item's priority depends on how many of its tenant's predictions queue before it."""
        if priority != queues.PRIORITY_BATCH:
            return priority
        return queues.batch_priority(position, settings.batch_heavy_after)

    def messages(queued_before: int) -> list[tuple[str, str]]:
        return [
            services.messages.render(p.id, p.queue, priority_at(queued_before + i)) for i, p in enumerate(predictions)
        ]

    try:
        services.store.create_many(
            predictions,
            tenant_cap=settings.max_queued_per_tenant,
            total_cap=settings.max_queued_total,
            messages=messages,
        )
    except QueueFull as exc:
        status = 429 if exc.scope == "tenant" else 503
        who = "this token has" if exc.scope == "tenant" else "the service has"
        raise ProblemError(
            status,
            f"{who} {exc.cap} predictions queued, the most allowed "
            f"(KILN_MAX_QUEUED_{'PER_TENANT' if exc.scope == 'tenant' else 'TOTAL'}); "
            f"{len(predictions)} more would not fit; retry when some have started",
            headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
        ) from None
    record_created(p.model for p in predictions)


def submit(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None = None,
) -> tuple[Prediction, bool]:
    """Store the prediction, then enqueue its id; returns it and whether it was created now.

    The record is written first so a worker never receives an id it cannot find; if enqueueing
    fails, the record says so instead of hanging. With an Idempotency-Key, a repeat of the same
    request returns the first prediction instead of creating another.
    """
    prediction = prepare(services, tenant, spec, body, base_url)
    if idempotency_key is not None:
        request = fingerprint(spec.ref, body.model_dump(mode="json", exclude_unset=True))
        existing = services.idempotency.claim(tenant, idempotency_key, request, prediction.id)
        if existing is not None:
            return _stored_by_first_request(services, existing), False
    try:
        store_and_enqueue(services, [prediction], queues.PRIORITY_INTERACTIVE)
    except BaseException:
        if idempotency_key is not None:
            services.idempotency.release(tenant, idempotency_key)
        raise
    return prediction, True


def _stored_by_first_request(services: Services, prediction_id: str) -> Prediction:
    deadline = time.monotonic() + DUPLICATE_WAIT_S
    while (prediction := services.store.get(prediction_id)) is None:
        if time.monotonic() > deadline:
            raise ProblemError(
                409,
                "a request with this Idempotency-Key is still being processed; retry shortly",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.02)
    return prediction


async def create_and_respond(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    prefer: str | None,
    idempotency_key: str | None,
) -> JSONResponse:
    """Create (or replay) the prediction; with ``Prefer: wait``, hold the answer until it is terminal."""
    wait_s = parse_prefer_wait(prefer, services.settings.prefer_wait_default_s)
    prediction, created = await run_in_threadpool(submit, services, tenant, spec, body, base_url, idempotency_key)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    if wait_s is not None:
        headers["Preference-Applied"] = f"wait={wait_s}"
        await wait_until_terminal(services.event_redis, prediction.id, wait_s)
        latest = await run_in_threadpool(services.store.get, prediction.id)
        if latest is not None:  # None only if the record vanished meanwhile (Redis lost it): answer as created
            prediction = latest
    rendered = render_prediction(prediction, base_url, services.url_signing_secret)
    if wait_s is not None and not prediction.status.is_terminal():
        headers["Location"] = rendered["urls"]["get"]
        # Replicate's Python client polls after a waited create only when the status is "starting";
        # any other unfinished status with no output would make replicate.run() return None.
        if rendered["output"] is None:
            rendered["status"] = Status.STARTING.value
    return JSONResponse(rendered, status_code=201, headers=headers)
