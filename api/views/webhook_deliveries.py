"""The webhook delivery log (as Svix and Stripe show one): each message a prediction or batch sent, with
its attempts; a tenant's failed messages, in cursor pages; and sending a finished ``completed`` message
again, rendered afresh (``shared.webhooks.history``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.errors import ProblemError
from api.pagination import Cursor
from api.services import Services
from api.views.prediction_list import parse_time
from shared.batches.records import batch_delivery_id, render_batch
from shared.predictions.record import format_timestamp
from shared.scheduling import queues
from shared.webhooks.history import FailedPage, SentDelivery, TimeWindow
from shared.webhooks.outbox import PENDING, Delivery, listed_when_failed

log = logging.getLogger(__name__)

# Failed messages one POST /v1/webhooks/deliveries/retry sends again at most (call again for more).
MAX_RETRIED_PER_CALL = 1000
# The states GET /v1/webhooks/deliveries lists (a prediction's or batch's /webhooks lists them all).
LISTED_STATES = ("failed",)
# A cursor's bound here: a failure time in unix microseconds.
MAX_BOUND_DIGITS = 17


def _timestamp(unix: float | None) -> str | None:
    return None if unix is None else format_timestamp(datetime.fromtimestamp(unix, UTC))


def is_batch_delivery(delivery: Delivery) -> bool:
    return delivery.id == batch_delivery_id(delivery.prediction_id)


def delivery_document(sent: SentDelivery) -> dict[str, Any]:
    """A message as the API shows it: ``id`` is its ``webhook-id`` header, ``attempts`` the latest
    ones, oldest first."""
    delivery = sent.delivery
    due = delivery.next_attempt_at
    if due is None and delivery.state == PENDING:
        due = delivery.created_at  # recorded, not attempted yet: due at once
    subject = "batch_id" if is_batch_delivery(delivery) else "prediction_id"
    return {
        "id": delivery.id,
        "event": delivery.event,
        "state": delivery.state,
        "url": delivery.url,
        subject: delivery.prediction_id,
        "created_at": _timestamp(delivery.created_at),
        "next_attempt_at": _timestamp(due) if delivery.state == PENDING else None,
        "attempts": [
            {
                "at": _timestamp(attempt.at),
                "status_code": attempt.status_code,
                "error": attempt.error,
                "duration_ms": attempt.duration_ms,
            }
            for attempt in sent.attempts
        ],
    }


def prediction_deliveries(services: Services, tenant: str, prediction_id: str) -> list[dict[str, Any]]:
    """The prediction's messages, oldest first; another tenant's prediction is a 404."""
    prediction = services.store.get(prediction_id)
    if prediction is None or prediction.tenant != tenant:
        raise ProblemError(404, f"prediction {prediction_id!r} not found")
    return [delivery_document(sent) for sent in services.webhook_history.of_prediction(prediction_id)]


def batch_deliveries(services: Services, tenant: str, batch_id: str) -> list[dict[str, Any]]:
    """The batch's one message, once recorded; another tenant's batch is a 404."""
    batch = services.batches.get(batch_id)
    if batch is None or batch.tenant != tenant:
        raise ProblemError(404, f"batch {batch_id!r} not found")
    return [delivery_document(sent) for sent in services.webhook_history.of_batch(batch_id)]


@dataclass(frozen=True)
class FailedFilter:
    """Which failed messages: those that failed at or after ``since`` and before ``until``."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def parse(cls, state: str | None, since: str | None, until: str | None, status: int = 400) -> FailedFilter:
        """The filter, or a problem (``status``: 400 for query parameters, 422 for a body) naming the field."""
        if state is not None and state not in LISTED_STATES:
            raise ProblemError(status, f"state: {state[:40]!r} is not one of {', '.join(LISTED_STATES)}")
        try:
            return cls(parse_time("since", since), parse_time("until", until))
        except ProblemError as exc:
            raise ProblemError(status, exc.detail) from None

    @property
    def window(self) -> TimeWindow:
        return TimeWindow(_micros(self.since), _micros(self.until))

    def as_query(self) -> dict[str, str]:
        """The filters as query parameters, for page links."""
        query = {"state": "failed"}
        for name, moment in (("since", self.since), ("until", self.until)):
            if moment is not None:
                query[name] = format_timestamp(moment) or ""
        return query


def _micros(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1_000_000)


def _bound(cursor: Cursor) -> int | None:
    """A cursor's failure time; a 400 naming ``cursor`` for a bound this list never made."""
    if cursor.bound is None:
        return None
    if not cursor.bound.isdigit() or len(cursor.bound) > MAX_BOUND_DIGITS:
        raise ProblemError(400, "cursor: not a cursor this API returned")
    return int(cursor.bound)


def failed_page(services: Services, tenant: str, cursor: Cursor, filters: FailedFilter) -> FailedPage:
    """One page of the tenant's failed messages, newest failure first."""
    bound = _bound(cursor)
    return services.webhook_history.failed(
        tenant,
        filters.window,
        before=bound if cursor.direction == "before" else None,
        after=bound if cursor.direction == "after" else None,
        limit=services.settings.predictions_page_size,
    )


def current_body(services: Services, delivery: Delivery) -> str | None:
    """The message's body as it would be rendered now (the prediction or batch as GET shows it, output
    URLs signed afresh), or None when its record is gone."""
    if is_batch_delivery(delivery):
        batch = services.batches.get(delivery.prediction_id)
        return None if batch is None else json.dumps(render_batch(batch))
    prediction = services.store.get(delivery.prediction_id)
    return None if prediction is None else json.dumps(services.render(prediction, prediction.base_url))


def owned_delivery(services: Services, tenant: str, webhook_id: str) -> SentDelivery:
    """The tenant's message; another tenant's looks exactly like a missing one."""
    sent = services.webhook_history.get(webhook_id) if webhook_id.startswith("msg_") else None
    if sent is not None and not sent.delivery.tenant:  # recorded before secrets were per tenant
        prediction = services.store.get(sent.delivery.prediction_id)
        owner = prediction.tenant if prediction else None
    else:
        owner = sent.delivery.tenant if sent else None
    if sent is None or owner != tenant:
        raise ProblemError(404, f"webhook message {webhook_id[:80]!r} not found")
    return sent


def resend(services: Services, delivery: Delivery, body: str, *, only_failed: bool = False) -> bool:
    """Send a finished ``completed`` message once more, now, with ``body`` (``current_body``): pending
    again, and enqueued. False when it is pending already (or, ``only_failed``, no longer failed)."""
    if not services.webhook_history.resend(delivery, body, only_failed=only_failed):
        return False
    try:
        services.celery.send_task(queues.DELIVER_WEBHOOK_TASK, args=[delivery.id], queue=queues.WEBHOOKS)
    except Exception as exc:  # the outbox's poller sends it once its lease passes
        log.warning("webhook %s not enqueued now (%s); the poller will send it", delivery.id, exc)
    return True


def retry_one(services: Services, tenant: str, webhook_id: str) -> dict[str, Any]:
    """``POST /v1/webhooks/deliveries/{webhook_id}/retry``: the message, pending again."""
    delivery = owned_delivery(services, tenant, webhook_id).delivery
    if not listed_when_failed(delivery):
        raise ProblemError(
            409, f"{webhook_id}: only completed messages are sent again; a later one superseded this {delivery.event}"
        )
    body = current_body(services, delivery)
    if body is None:
        services.webhook_history.forget_failed(tenant, [webhook_id])  # it leaves the list, as a bulk retry's
        raise ProblemError(404, f"webhook message {webhook_id!r} not found: its record expired")
    if delivery.state == PENDING or not resend(services, delivery, body):
        if services.core.outbox.get(webhook_id) is None:  # expired with its record meanwhile
            raise ProblemError(404, f"webhook message {webhook_id!r} not found: its record expired")
        raise ProblemError(409, f"{webhook_id}: pending already (its next attempt is scheduled); retry once it ended")
    return delivery_document(owned_delivery(services, tenant, webhook_id))


def retry_failed(services: Services, tenant: str, filters: FailedFilter) -> dict[str, int]:
    """``POST /v1/webhooks/deliveries/retry``: up to ``MAX_RETRIED_PER_CALL`` of the tenant's failed
    messages in the window, oldest failure first, sent again; how many, and how many are left."""
    history = services.webhook_history
    retried, gone = 0, []
    for webhook_id in history.failed_ids(tenant, filters.window, MAX_RETRIED_PER_CALL):
        delivery = services.core.outbox.get(webhook_id)
        body = None if delivery is None else current_body(services, delivery)
        if delivery is None or body is None:
            gone.append(webhook_id)  # expired with its record: it leaves the list instead
        else:
            retried += resend(services, delivery, body, only_failed=True)  # a concurrent retry may have sent it
    history.forget_failed(tenant, gone)
    return {"retried": retried, "remaining": history.count_failed(tenant, filters.window)}
