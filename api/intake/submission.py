"""Turning a create request into a stored, enqueued prediction, and answering it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from redis.client import Pipeline
from redis.exceptions import RedisError

from api.auth import Caller
from api.deps import DeferredAuth
from api.errors import ProblemError
from api.intake.file_checks import check_file_inputs
from api.intake.idempotency import await_first_request, fingerprint
from api.intake.image_staging import RequestImages, stage_images
from api.intake.inputs import check_input
from api.intake.loop_fit import loop_checked_images
from api.schemas import PredictionFields
from api.services import Services
from api.streams.waiting import parse_prefer_wait, wait_until_terminal
from shared.db import keys
from shared.db.client import AlreadyStored
from shared.db.replication import NotReplicated
from shared.model_spec import ModelSpec
from shared.predictions.client_json import has_stored_inputs
from shared.predictions.deadlines import BadDuration, parse_duration
from shared.predictions.record import Prediction, new_id, utcnow
from shared.predictions.status import Status
from shared.predictions.store import ClaimLost, RateLimited, TokenRefused, read_prediction
from shared.runtime.metrics import record_created
from shared.scheduling import queues
from shared.scheduling.lost_messages import mark_sent_in_pipeline
from shared.scheduling.queue_counters import QueueFull
from shared.scheduling.queues import Priority
from shared.security.ssrf import URLRefused, resolve_checked
from shared.storage.objects import prediction_prefix

log = logging.getLogger(__name__)

# Over a queue cap: predictions start every few seconds, so this is when room is likely.
QUEUE_FULL_RETRY_AFTER_S = 5


def deadline_after(cancel_after: str | None) -> datetime | None:
    """The deadline a ``Cancel-After`` header sets (from now), or a 400 naming the header."""
    if cancel_after is None:
        return None
    try:
        return utcnow() + timedelta(seconds=parse_duration(cancel_after))
    except BadDuration as exc:
        raise ProblemError(400, f"Cancel-After: {exc}") from None


def check_webhook(url: str | None, services: Services) -> str | None:
    """Refuse webhook URLs the sender would refuse (SSRF guard), so the client learns it now."""
    if url is None:
        return None
    try:
        resolve_checked(url, allow_private=services.settings.webhook_allow_private)
    except URLRefused as exc:
        raise ProblemError(422, f"webhook: {exc}") from None
    return url


def check_retention(retention_s: int | None, services: Services) -> int | None:
    """A create's own ``retention_s``: at most ``KILN_RETENTION_S``, else a 422 naming both."""
    most = services.settings.retention_s
    if retention_s is not None and retention_s > most:
        raise ProblemError(
            422, f"retention_s: {retention_s} is more than the maximum, {most} seconds (KILN_RETENTION_S)"
        )
    return retention_s


def prepare(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    images: RequestImages | set[str] | None = None,
    deadline: datetime | None = None,
    deployment: str | None = None,
    priority: Priority = "normal",
    on_loop: bool = False,
) -> Prediction:
    """Validate a create request (input, file inputs, webhook, every image) into a prediction ready
    to store, its large and remote images stored in S3 (``api.intake.image_staging``).

    ``images`` is shared by the items of one request (a batch), so an image repeated across them is
    checked and uploaded once; a bare set is taken as the data URIs already checked. ``priority`` is
    the request's (a batch's ``priority``, the ``Kiln-Priority`` header); the body's own wins. ``on_loop``:
    validated on the event loop (``api.intake.loop_fit``), which stores nothing in S3, so a refusal has
    nothing to delete there (and the loop makes no S3 call)."""
    images = images if isinstance(images, RequestImages) else RequestImages(checked=images or set())
    # Text that is not valid Unicode is never fetched, stored or echoed: ``body``'s model refused it already
    # (``PredictionFields._valid_text``, before any field was read).
    retention_s = check_retention(body.retention_s, services)
    prediction_id = new_id()
    inputs, found = check_input(spec, body.input, services, tenant, base_url, images.checked)
    check_file_inputs(spec, inputs, services, tenant, base_url, images.file_headers)
    webhook = check_webhook(str(body.webhook) if body.webhook else None, services)
    try:
        inputs, input_files = stage_images(spec, inputs, services, tenant, prediction_id, base_url, images, found)
    except BaseException:
        images.forget(prediction_id)
        if not on_loop:
            discard_staged_inputs(services, [prediction_id])  # a 4xx leaves no object behind
        raise
    return Prediction(
        id=prediction_id,
        tenant=tenant,
        model=spec.ref,
        version=spec.version_id(services.settings),
        queue=spec.queue,
        input=inputs,
        input_files=input_files,
        webhook=webhook,
        webhook_events_filter=list(body.webhook_events_filter) if body.webhook_events_filter is not None else None,
        base_url=base_url,
        deadline=deadline,
        deployment=deployment,
        retention_s=retention_s,
        priority=body.priority or priority,
    )


def with_priority(request: dict[str, Any], priority: Priority) -> dict[str, Any]:
    """A request's fingerprint body (``Idempotency-Key``) with the priority a header gave it: the same key
    with another priority is another request. A normal one adds nothing (fingerprints stay as they were)."""
    return request if priority == "normal" or "priority" in request else request | {"priority": priority}


def staged(prediction: Prediction) -> bool:
    """Whether anything of ``prediction`` may be in S3 under its own prefix: a fetched or uploaded image
    (``input_files``), or a large data URI's stored copy, which its input names (no ``input_files`` entry)."""
    return bool(prediction.input_files) or has_stored_inputs(prediction)


def discard_staged_inputs(services: Services, prediction_ids: Iterable[str]) -> None:
    """Delete what was staged in S3 for predictions that will not be stored (best effort: the
    answer is the problem that stopped them, not a storage error)."""
    for prediction_id in prediction_ids:
        try:
            services.storage.delete_prefix(prediction_prefix(prediction_id))
        except Exception as exc:
            log.warning("staged inputs of refused prediction %s not deleted: %s", prediction_id, exc)


def store_and_enqueue(
    services: Services, predictions: list[Prediction], priority: int, tenant_cap: int | None = None
) -> None:
    """Store predictions within the queue caps and enqueue them (each message with its entry in the
    waiting index, ``shared.scheduling.lost_messages``), in one Redis transaction: 429
    (tenant: ``tenant_cap``, else ``KILN_MAX_QUEUED_PER_TENANT``) or 503 (global cap) with nothing
    stored; Redis down is a 503 with nothing stored. Inputs staged for them are deleted then.

    Normal predictions go to Celery at ``priority`` (a batch item's step depends on how many of its
    tenant's predictions queue before it); low ones to the dispatcher's low lane, released later."""
    settings = services.settings
    tenant_cap = tenant_cap or settings.max_queued_per_tenant

    def priority_at(position: int) -> int:
        if priority != queues.PRIORITY_BATCH:
            return priority
        return queues.batch_priority(position, settings.batch_heavy_after)

    def enqueue(pipe: Pipeline, queued_before: int) -> None:
        lines: dict[tuple[str, int], list[str]] = {}
        for i, p in enumerate(predictions):
            step = queues.PRIORITY_LOW if p.priority == "low" else priority_at(queued_before + i)
            lines.setdefault((p.queue, step), []).append(p.id)
        tenant = predictions[0].tenant
        for (family, step), ids in lines.items():
            if step == queues.PRIORITY_LOW:
                services.dispatcher.add_to_pipeline(pipe, family, tenant, ids, low=True)
                continue
            for prediction_id in ids:
                pipe.lpush(*services.messages.render(prediction_id, family, step))
            mark_sent_in_pipeline(pipe, ids)
            services.store.lines.enter_in_pipeline(pipe, family, step, tenant, ids)

    try:
        services.store.create_many(
            predictions, tenant_cap=tenant_cap, total_cap=settings.max_queued_total, enqueue=enqueue
        )
    except BaseException as exc:
        if not isinstance(exc, AlreadyStored):  # an id taken: what is staged under it is not only ours
            discard_staged_inputs(services, (p.id for p in predictions if staged(p)))
        if isinstance(exc, QueueFull):
            raise _queue_full_problem(exc, len(predictions)) from None
        raise
    record_created(p.model for p in predictions)
    _release_low_lanes(services, predictions)
    _read_tickets(services, predictions)


def _read_tickets(services: Services, predictions: list[Prediction]) -> None:
    """Their queue-line tickets, for the create's answer (its ``queue_position``); without them (Redis
    failing just now) it shows none, and a GET shows it."""
    try:
        services.store.lines.read_tickets(predictions)
    except RedisError as exc:
        log.warning("queue tickets of %d new predictions not read: %s", len(predictions), exc)


def _release_low_lanes(services: Services, predictions: list[Prediction]) -> None:
    """Low predictions wait in the dispatcher: released now if no normal work waits (else a worker's
    start or the maintenance job releases them; a failure here leaves that to them)."""
    for family in {p.queue for p in predictions if p.priority == "low"}:
        try:
            services.dispatcher.release(family)
        except RedisError as exc:
            log.warning("low lane of %s not released after a create (the maintenance job will): %s", family, exc)


# What a create answers when the replicas have not confirmed it: retry soon, with the same Idempotency-Key.
NOT_REPLICATED_RETRY_AFTER_S = 1


def confirm_replicated(services: Services, still_there: Callable[[], bool] | None = None) -> None:
    """Answer 201 only once ``KILN_REDIS_MIN_REPLICAS_ACK`` replicas hold what this request stored (and what
    a replay finds): otherwise a 503 with ``Retry-After``. What was stored stays (it may well run): a retry
    with the same Idempotency-Key finds it and confirms again, where a retry without one creates another."""
    try:
        services.core.replication.confirm(still_there)
    except (NotReplicated, RedisError) as exc:
        raise ProblemError(
            503,
            f"stored, but not yet confirmed on the Redis replicas ({exc}; KILN_REDIS_MIN_REPLICAS_ACK="
            f"{services.settings.redis_min_replicas_ack}): retry with the same Idempotency-Key",
            headers={"Retry-After": str(NOT_REPLICATED_RETRY_AFTER_S)},
        ) from None


def confirm_created(services: Services, prediction: Prediction, idempotency_key: str | None) -> None:
    """``confirm_replicated`` for a prediction stored just now, after which its Idempotency-Key is kept for
    good: a 503 here is replayed, not created again. Unless a failover lost what was stored (it is not there
    after the ``WAIT``): then the key is released too, so that the retry the 503 asks for creates it again at
    once, rather than wait for a prediction that will never be stored (409 until the claim is stale)."""
    lost = False

    def still_there() -> bool:
        nonlocal lost
        lost = services.store.get(prediction.id) is None
        return not lost

    try:
        confirm_replicated(services, still_there)
    except ProblemError:
        if lost and idempotency_key is not None:
            services.idempotency.release(prediction.tenant, idempotency_key, prediction.id)
        raise


def _queue_full_problem(exc: QueueFull, count: int) -> ProblemError:
    """429/503 with a Retry-After when ``count`` more predictions would fit once some have started;
    422 without one when ``count`` is over the cap itself (no wait would ever admit them)."""
    tenant = exc.scope == "tenant"
    who = "this token" if tenant else "the service"
    setting = "the token's max_queued, else KILN_MAX_QUEUED_PER_TENANT" if tenant else "KILN_MAX_QUEUED_TOTAL"
    if count > exc.cap:
        return ProblemError(
            422,
            f"{count} predictions in one request, but {who} may have at most {exc.cap} queued ({setting}): "
            f"they can never fit; send at most {exc.cap} at a time",
        )
    return ProblemError(
        429 if tenant else 503,
        f"{who} may have at most {exc.cap} predictions queued ({setting}); {count} more would not fit now; "
        "retry when some have started",
        headers={"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)},
    )


@dataclass
class Submitted:
    """What ``submit`` did: the prediction, whether it was created now (else the first request's was
    replayed), and, for one stored and enqueued now in one round trip, its ``queue_position`` as read
    there (``position_read``; otherwise the answer reads it)."""

    prediction: Prediction
    created: bool
    position: int | None = None
    position_read: bool = False


def store_and_enqueue_one(
    services: Services, prediction: Prediction, tenant_cap: int | None = None, idempotency_key: str | None = None
) -> int | None:
    """``store_and_enqueue`` for one normal-priority prediction, in one Redis round trip
    (``PredictionStore.create_one``: caps, record, Celery message and queue-line ticket together, all or
    nothing); returns its ``queue_position``, read in the same script. The same answers: 429/503 over a
    cap, a 503 for Redis down, with nothing stored; inputs staged for it are deleted then. With
    ``idempotency_key``, only while its claim names the prediction (else 409, ``_raise_one_refusal``).
    ``store_and_enqueue_one_async`` is the same on the event loop."""
    try:
        position = services.store.create_one(
            prediction, **_create_one_args(services, prediction, tenant_cap, idempotency_key)
        )
    except BaseException as exc:
        _one_refused(services, prediction, exc)
        _raise_one_refusal(exc)
        raise
    record_created([prediction.model])
    return position


async def store_and_enqueue_one_async(
    services: Services,
    prediction: Prediction,
    tenant_cap: int | None = None,
    idempotency_key: str | None = None,
    auth: DeferredAuth | None = None,
) -> int | None:
    """``store_and_enqueue_one`` awaited on the event loop (``AsyncCreates``): no intake thread waits on
    the round trip. Should it fail, the staged inputs are deleted and ``idempotency_key`` released, on a
    thread (only when there is one or the other to do). A token check still pending (``auth``) is made by
    the same script, before it writes anything: 401 or 429 as ``current_caller`` answers."""
    check = auth.take_over() if auth is not None and auth.pending else None
    try:
        stored = await services.async_creates.create_one(
            prediction, **_create_one_args(services, prediction, tenant_cap, idempotency_key), token=check
        )
    except BaseException as exc:
        if staged(prediction) or idempotency_key is not None:
            await run_in_threadpool(_one_refused, services, prediction, exc, idempotency_key)
        if auth is not None and isinstance(exc, TokenRefused | RateLimited):
            auth.refused(exc)
        _raise_one_refusal(exc)
        raise
    if auth is not None and stored.tokens_left is not None:
        auth.stored(stored.tokens_left)
    record_created([prediction.model])
    return stored.position


def _create_one_args(
    services: Services, prediction: Prediction, tenant_cap: int | None, idempotency_key: str | None
) -> dict[str, Any]:
    """What ``create_one`` (sync or async) takes besides the prediction: its Celery message on the
    interactive step, that line, the queue caps and its Idempotency-Key's claim (if any)."""
    settings = services.settings
    claim = None if idempotency_key is None else services.idempotency.claim_key(prediction.tenant, idempotency_key)
    return {
        "message": services.messages.render(prediction.id, prediction.queue, queues.PRIORITY_INTERACTIVE),
        "line": queues.PRIORITY_INTERACTIVE,
        "tenant_cap": tenant_cap or settings.max_queued_per_tenant,
        "total_cap": settings.max_queued_total,
        "claim": claim,
    }


def _raise_one_refusal(exc: BaseException) -> None:
    """A single create's store refused: the answer for a full queue (429/503/422), or 409 for a create whose
    Idempotency-Key claim was taken over while it was processed (a retry of the request judged it abandoned,
    or a failover lost the claim: the retry's prediction is the key's). Anything else is the caller's to raise."""
    if isinstance(exc, QueueFull):
        raise _queue_full_problem(exc, 1) from None
    if isinstance(exc, ClaimLost):
        raise ProblemError(
            409,
            "A retry of this request took its Idempotency-Key over while it was processed; retry to get its prediction",
            headers={"Retry-After": "1"},
        ) from None


def _one_refused(
    services: Services, prediction: Prediction, exc: BaseException, idempotency_key: str | None = None
) -> None:
    """After a single create stored nothing: its staged inputs deleted, and its Idempotency-Key released.
    Unless its id was taken: what is staged under it is not only ours, and the key keeps naming it (a store
    retried through a failover finds its own first try there, whose answer the failover lost: a retry of the
    request replays that prediction rather than create a second one)."""
    if isinstance(exc, AlreadyStored):
        return
    discard_staged_inputs(services, [prediction.id] if staged(prediction) else [])
    if idempotency_key is not None:
        services.idempotency.release(prediction.tenant, idempotency_key, prediction.id)


def submit(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None = None,
    tenant_cap: int | None = None,
    deadline: datetime | None = None,
    deployment: str | None = None,
    priority: Priority = "normal",
) -> tuple[Prediction, bool]:
    """Store the prediction, then enqueue its id; returns it and whether it was created now.

    The record is written first so a worker never receives an id it cannot find; if enqueueing
    fails, the record says so instead of hanging. With an Idempotency-Key, a repeat of the same
    request returns the first prediction instead of creating another.
    """
    done = submit_one(
        services, tenant, spec, body, base_url, idempotency_key, tenant_cap, deadline, deployment, priority
    )
    return done.prediction, done.created


def submit_one(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None = None,
    tenant_cap: int | None = None,
    deadline: datetime | None = None,
    deployment: str | None = None,
    priority: Priority = "normal",
) -> Submitted:
    """``submit``, with the queue position when the create read it (a normal-priority one stored now)."""
    done = validate_and_claim(services, tenant, spec, body, base_url, idempotency_key, deadline, deployment, priority)
    if not done.created:
        return done
    prediction = done.prediction
    if prediction.priority == "low":  # the dispatcher's low lane: the general path
        return submit_one_stored(services, done, tenant, idempotency_key, tenant_cap)
    with services.idempotency.released_on_failure(tenant, idempotency_key, prediction.id):
        done.position = store_and_enqueue_one(services, prediction, tenant_cap, idempotency_key)
        done.position_read = True
    confirm_created(services, prediction, idempotency_key)
    return done


def validate_and_claim(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None = None,
    deadline: datetime | None = None,
    deployment: str | None = None,
    priority: Priority = "normal",
    loop_checked: RequestImages | None = None,
) -> Submitted:
    """The first half of ``submit``: the prediction validated and its images staged (``prepare``), and its
    Idempotency-Key (if any) claimed for it: ``created`` (to be stored next), or, for a repeat of the same
    request, the first request's prediction (``created`` false; confirmed on the replicas). ``loop_checked``:
    validated on the event loop (``api.intake.loop_fit``), its data-URI images checked there."""
    prediction = prepare(
        services,
        tenant,
        spec,
        body,
        base_url,
        deadline=deadline,
        deployment=deployment,
        priority=priority,
        images=loop_checked,
        on_loop=loop_checked is not None,
    )
    if idempotency_key is not None:
        request = fingerprint(
            spec.ref, with_priority(body.model_dump(mode="json", exclude_unset=True), prediction.priority)
        )
        try:
            existing = services.idempotency.claim(
                tenant,
                idempotency_key,
                request,
                prediction.id,
                lambda pid: services.store.get(pid) is not None,
                # A normal create's store checks its claim (``store_and_enqueue_one``); the low lane's does not.
                record_key=keys.prediction if prediction.priority != "low" else None,
            )
        except BaseException:
            discard_staged_inputs(services, [prediction.id] if staged(prediction) else [])
            raise
        if existing is not None:
            discard_staged_inputs(services, [prediction.id] if staged(prediction) else [])
            stored = _stored_by_first_request(services, existing)
            confirm_replicated(services, lambda: services.store.get(stored.id) is not None)
            return Submitted(stored, created=False)
    return Submitted(prediction, created=True)


def _stored_by_first_request(services: Services, prediction_id: str) -> Prediction:
    return await_first_request(lambda: services.store.get(prediction_id), "a request")


def _on_intake_thread(
    services: Services,
    tenant: str,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None,
    tenant_cap: int | None,
    deadline: datetime | None,
    deployment: str | None,
    priority: Priority,
) -> Submitted:
    """What a create does on its intake thread: validate and claim; a low-priority one (the dispatcher's
    lane, the general path) is stored there too. A normal one is left to store on the event loop."""
    done = validate_and_claim(services, tenant, spec, body, base_url, idempotency_key, deadline, deployment, priority)
    if done.created and done.prediction.priority == "low":
        return submit_one_stored(services, done, tenant, idempotency_key, tenant_cap)
    return done


def submit_one_stored(
    services: Services, done: Submitted, tenant: str, idempotency_key: str | None, tenant_cap: int | None
) -> Submitted:
    """A validated, claimed prediction stored and enqueued by the general path (``store_and_enqueue``), and
    confirmed on the replicas."""
    prediction = done.prediction
    with services.idempotency.released_on_failure(tenant, idempotency_key, prediction.id):
        store_and_enqueue(services, [prediction], queues.PRIORITY_INTERACTIVE, tenant_cap)
    confirm_created(services, prediction, idempotency_key)
    return done


async def _submit(
    services: Services,
    caller: Caller,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    idempotency_key: str | None,
    deadline: datetime | None,
    deployment: str | None,
    priority: Priority,
    auth: DeferredAuth | None = None,
) -> Submitted:
    """``submit`` for a request: validated (and a low one stored) on an intake thread, or on the event loop
    when that does no I/O and little CPU (``api.intake.loop_fit``); a normal one then
    stored in its one round trip on the event loop, and confirmed on the replicas (on a thread, when
    ``KILN_REDIS_MIN_REPLICAS_ACK`` asks for it). A token check left pending (``auth``) is made by that
    round trip for a create validated on the loop; any other checks it before its intake thread."""
    tenant = caller.tenant
    checked = loop_checked_images(spec, body, idempotency_key, priority, services.settings)
    if checked is not None:  # no I/O, little CPU: on the loop
        done = validate_and_claim(services, tenant, spec, body, base_url, None, deadline, deployment, priority, checked)
    else:
        if auth is not None:
            await auth.settle()
        work = (services, tenant, spec, body, base_url, idempotency_key, caller.max_queued, deadline, deployment)
        done = await services.intake.run(tenant, _on_intake_thread, *work, priority)
    if not done.created or done.position_read or done.prediction.priority == "low":
        return done
    prediction = done.prediction
    done.position = await store_and_enqueue_one_async(services, prediction, caller.max_queued, idempotency_key, auth)
    done.position_read = True
    if services.core.replication.replicas > 0:
        await run_in_threadpool(confirm_created, services, prediction, idempotency_key)
    return done


async def create_and_respond(
    services: Services,
    caller: Caller,
    spec: ModelSpec,
    body: PredictionFields,
    base_url: str,
    prefer: str | None,
    idempotency_key: str | None,
    cancel_after: str | None = None,
    deployment: str | None = None,
    priority: Priority | None = None,
    auth: DeferredAuth | None = None,
) -> Response:
    """Create (or replay) the prediction; with ``Prefer: wait``, hold the answer until it is terminal.

    A waited create takes one of the token's open-stream slots first (429 when none is free, with
    nothing stored), its token checked before (``auth``, a check left pending: ``DeferredAuth``). Once
    the prediction is stored the answer is a 201 whatever happens while waiting: a client that retried
    a 5xx would run it twice."""
    wait_s = parse_prefer_wait(prefer, services.settings.prefer_wait_default_s)
    deadline = deadline_after(cancel_after)
    async with contextlib.AsyncExitStack() as held:
        if wait_s is not None:
            if auth is not None:
                await auth.settle()
            await held.enter_async_context(services.stream_slots.hold(caller.tenant))
        done = await _submit(
            services, caller, spec, body, base_url, idempotency_key, deadline, deployment, priority or "normal", auth
        )
        prediction = done.prediction
        headers = {} if done.created else {"Idempotent-Replayed": "true"}
        if wait_s is not None:
            headers["Preference-Applied"] = f"wait={wait_s}"
            prediction = await _after_waiting(services, prediction, wait_s)
    if wait_s is None and done.position_read:  # the position its create read: no Redis read
        rendered = services.render_with_position(prediction, base_url, done.position)
    else:  # its queue position is a Redis read: on a thread
        rendered = await run_in_threadpool(services.render, prediction, base_url)
    if wait_s is not None and not prediction.status.is_terminal():
        headers["Location"] = rendered["urls"]["get"]
        # Replicate's Python client polls after a waited create only when the status is "starting";
        # any other unfinished status with no output would make replicate.run() return None.
        if rendered["output"] is None:
            rendered["status"] = Status.STARTING.value
    # orjson: the answer holds the input (data-URI images); the stdlib encoder cost more than the rest of it.
    return Response(orjson.dumps(rendered), status_code=201, headers=headers, media_type="application/json")


async def _after_waiting(services: Services, stored: Prediction, wait_s: int) -> Prediction:
    """The prediction once terminal or after ``wait_s``; as stored if waiting or reading fails."""
    try:
        await wait_until_terminal(services.events, services.async_redis, stored.id, wait_s)
        return await read_prediction(services.async_redis, stored.id) or stored
    except Exception as exc:
        log.warning("waiting for prediction %s failed (%r); answering with it as stored", stored.id, exc)
        return stored
