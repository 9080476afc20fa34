"""The webhook outbox: events recorded in Redis, delivered by the webhook worker.

Whoever changes a prediction (a GPU worker, or the API canceling a queued one) only records the
event here and sends the delivery's id to the ``webhooks`` queue; it never waits on a receiver.
Each delivery's state lives in Redis and every pending one sits in a due-time sorted set, so a
lost queue message, a restarted webhook worker or a restarted Redis (AOF) loses no delivery: the
webhook worker's poller sends whatever is due again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from celery import Celery
from redis import Redis

from shared.db import keys, lua
from shared.db.client import as_text
from shared.predictions.client_json import render_prediction
from shared.predictions.record import Prediction, new_id
from shared.predictions.store import PredictionStore
from shared.scheduling import queues
from shared.security.signed_urls import UrlSigner
from shared.settings import Settings
from shared.webhooks.signing import THROTTLED_EVENTS

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT, KeyT

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# How long a claimed delivery may take before the poller sends it again (beyond the HTTP timeout).
CLAIM_LEASE_S = 60.0
# Events a prediction's ``completed`` delivery goes out after (once each was attempted).
COMPLETED_AFTER = ("start", "output")
# The markers of a prediction's deliveries (``keys.webhook_completed``, ``keys.webhook_latest_delivery``)
# are kept this long; a finished delivery this long beyond its prediction's record retention (``kept_s``).
FINISHED_TTL_S = 7 * 24 * 3600
# Attempts kept per delivery (the latest): the retry schedule's and some manual retries'.
MAX_ATTEMPTS_KEPT = 50


@dataclass(frozen=True)
class Attempt:
    """One attempt to deliver: when it started, the receiver's HTTP status or why there was none, and
    how long it took."""

    at: float
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def outcome(self) -> str:
        """As ``Delivery.last_outcome`` reads: ``HTTP 503``, or the error."""
        return f"HTTP {self.status_code}" if self.status_code is not None else self.error or ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Attempt:
        return cls(**json.loads(raw))


@dataclass
class Delivery:
    id: str
    prediction_id: str
    event: str
    url: str
    body: str
    created_at: float
    # Terminal events are retried on the configured schedule; the others get one attempt.
    retry: bool
    state: str = PENDING
    attempts: int = 0
    last_outcome: str | None = None
    next_attempt_at: float | None = field(default=None)
    # The prediction's tenant, whose secret signs the delivery ("" in deliveries recorded before
    # secrets were per tenant: the prediction's record says).
    tenant: str = ""

    def to_hash(self) -> dict[FieldT, EncodableT]:
        return {name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> Delivery:
        return cls(**{as_text(k): json.loads(v) for k, v in fields.items()})


def completed_message_id(prediction_id: str) -> str:
    """The id (``webhook-id``) of a prediction's one ``completed`` message, as a batch's webhook has
    ``shared.batches.records``' fixed id."""
    return f"msg_completed_{prediction_id}"


def listed_when_failed(delivery: Delivery) -> bool:
    """Whether a failed delivery is listed with its tenant's failed deliveries and may be sent again: a
    ``completed`` message (a prediction's or a batch's), whose tenant is known. A failed ``output`` or
    ``logs`` event is superseded by its ``completed`` message; resent later, it would land after it."""
    return delivery.event == "completed" and bool(delivery.tenant)


class WebhookOutbox:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._claim_due = lua.register(redis, "claim_due")
        self._record_script = lua.register(redis, "webhook_outbox_record")
        self._attempt_script = lua.register(redis, "webhook_outbox_attempt")
        self._sending_script = lua.register(redis, "webhook_sending_place")
        self._leave_script = lua.register(redis, "webhook_sending_leave")

    @property
    def kept_s(self) -> int:
        """How long a finished delivery (and its attempts) is kept: past its prediction's record, which
        takes it along (``shared.predictions.retention``), and past a batch's record, which expires
        ``BATCH_TTL_S`` (7 days) beyond its items' record retention."""
        return FINISHED_TTL_S + max(self.settings.record_retention_s, self.settings.retention_s)

    def record(self, prediction: Prediction, event: str, body: str) -> Delivery | None:
        """Persist a new pending delivery, due now. None for a ``completed`` event already recorded for
        this prediction: each prediction has one ``completed`` message, whoever follows its ending up.
        That message's id is the prediction's (``completed_message_id``): recorded again after a
        failover lost its first record (which may have been sent already), it is the same message, which
        a receiver deduplicates by its ``webhook-id``."""
        delivery = Delivery(
            id=completed_message_id(prediction.id) if event == "completed" else f"msg_{new_id()}",
            prediction_id=prediction.id,
            event=event,
            url=prediction.webhook or "",
            body=body,
            created_at=time.time(),
            retry=event == "completed",
            tenant=prediction.tenant,
        )
        index = keys.webhook_deliveries(prediction.id)
        if event == "completed":
            recorded = self._record(delivery, keys.webhook_completed(prediction.id), once=True, index=index)
            return delivery if recorded else None
        if event in COMPLETED_AFTER:
            self._record(delivery, keys.webhook_latest_delivery(prediction.id, event), once=False, index=index)
        else:
            self._record(delivery, keys.webhook_delivery(delivery.id), once=False, index=index)
        return delivery

    def record_once(self, delivery_id: str, subject_id: str, tenant: str, url: str, body: str) -> Delivery | None:
        """Persist a ``completed`` delivery under a fixed id (a batch's one webhook), unless a delivery
        with that id was already recorded: then None."""
        delivery = Delivery(
            id=delivery_id,
            prediction_id=subject_id,
            event="completed",
            url=url,
            body=body,
            created_at=time.time(),
            retry=True,
            tenant=tenant,
        )
        return delivery if self._record(delivery, keys.webhook_delivery(delivery.id), once=True) else None

    def _record(self, delivery: Delivery, marker: str, *, once: bool, index: str | None = None) -> bool:
        """One atomic write of the delivery, its due time, ``marker`` and its place in its prediction's
        ``index`` (``webhook_outbox_record.lua``)."""
        fields = [item for pair in delivery.to_hash().items() for item in pair]
        args = ["once" if once else "latest", FINISHED_TTL_S, delivery.created_at + CLAIM_LEASE_S, delivery.id]
        args += [delivery.created_at, self.kept_s]
        record_keys = [keys.webhook_delivery(delivery.id), keys.webhook_due(), marker]
        return bool(self._record_script(keys=record_keys + ([index] if index else []), args=args + fields))

    def completed_recorded(self, prediction_ids: Sequence[str]) -> set[str]:
        """Which of these predictions have their ``completed`` delivery recorded."""
        if not prediction_ids:
            return set()
        found = self.redis.mget([keys.webhook_completed(i) for i in prediction_ids])
        return {i for i, marker in zip(prediction_ids, found, strict=True) if marker is not None}

    def begin_progress(self, prediction_id: str, event: str) -> bool:
        """Mark an ``output``/``logs`` delivery in flight. False for a ``logs`` event once the
        prediction's ``completed`` event is recorded: it is stale (``completed`` carries every log
        line) and must not reach the receiver after it. ``output`` events are always sent.

        Paired with ``progress_in_flight``: this side counts itself in before it looks for the
        completed marker, the completed side is recorded before it looks at the count, so at least
        one of the two sees the other and no progress event lands after ``completed``.
        """
        counter = keys.webhook_progress_sending(prediction_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(counter)
            pipe.expire(counter, int(CLAIM_LEASE_S))
            pipe.exists(keys.webhook_completed(prediction_id))
            stale = event == "logs" and pipe.execute()[2]
        if stale:
            self.end_progress(prediction_id)
        return not stale

    def end_progress(self, prediction_id: str) -> None:
        self.redis.decr(keys.webhook_progress_sending(prediction_id))

    def progress_in_flight(self, prediction_id: str) -> bool:
        return int(self.redis.get(keys.webhook_progress_sending(prediction_id)) or 0) > 0

    def unattempted(self, delivery_id: str) -> bool:
        """Whether that delivery exists and has not been attempted yet."""
        found = self.get(delivery_id)
        return found is not None and found.state == PENDING and found.attempts == 0

    def completed_must_wait(self, delivery: Delivery) -> bool:
        """A ``completed`` event goes out after the prediction's ``start`` and latest ``output``
        events were attempted, and while none of its progress events is in flight."""
        latest = self.redis.mget(
            [keys.webhook_latest_delivery(delivery.prediction_id, event) for event in COMPLETED_AFTER]
        )
        return any(self.unattempted(as_text(found)) for found in latest if found) or self.progress_in_flight(
            delivery.prediction_id
        )

    def passes_throttle(self, prediction_id: str, event: str) -> bool:
        """``output``/``logs``: at most one per throttle window per prediction. Others always pass."""
        if event not in THROTTLED_EVENTS or self.settings.webhook_throttle_ms == 0:
            return True
        return bool(
            self.redis.set(
                keys.webhook_throttle(prediction_id, event), 1, nx=True, px=self.settings.webhook_throttle_ms
            )
        )

    def get(self, delivery_id: str) -> Delivery | None:
        fields = self.redis.hgetall(keys.webhook_delivery(delivery_id))
        return Delivery.from_hash(fields) if fields else None

    def claim_due(self, limit: int = 100) -> list[str]:
        return [
            i.decode() for i in self._claim_due(keys=[keys.webhook_due()], args=[time.time(), CLAIM_LEASE_S, limit])
        ]

    def lock_attempt(self, delivery_id: str) -> bool:
        """Only one process attempts a delivery at a time (a redelivered message may race the poller)."""
        return bool(self.redis.set(keys.webhook_attempt_lock(delivery_id), 1, nx=True, ex=int(CLAIM_LEASE_S)))

    def unlock_attempt(self, delivery_id: str) -> None:
        self.redis.delete(keys.webhook_attempt_lock(delivery_id))

    def take_sending_place(self, delivery: Delivery) -> bool:
        """One of its tenant's ``webhook_sending_per_tenant`` places for an attempt; False when all are taken:
        the delivery then waits, first come first woken, until an attempt of its tenant ends (or, should
        none, its claim would lapse). A delivery recorded before tenants were known takes none."""
        if not delivery.tenant:
            return True
        now = time.time()
        places = self.settings.webhook_sending_per_tenant
        args: list[EncodableT] = [now, now + CLAIM_LEASE_S, places, delivery.id, int(CLAIM_LEASE_S)]
        return bool(self._sending_script(keys=self._sending_keys(delivery.tenant), args=args))

    def leave_sending_place(self, delivery: Delivery) -> None:
        """The attempt ended: its place goes to its tenant's delivery that has waited longest (due now)."""
        if delivery.tenant:
            self._leave_script(keys=self._sending_keys(delivery.tenant), args=[delivery.id, time.time()])

    @staticmethod
    def _sending_keys(tenant: str) -> list[KeyT]:
        return [keys.webhook_tenant_sending(tenant), keys.webhook_tenant_waiting(tenant), keys.webhook_due()]

    def postpone(self, delivery: Delivery, delay_s: float) -> None:
        self.redis.zadd(keys.webhook_due(), {delivery.id: time.time() + delay_s})

    def forget_due(self, delivery_id: str) -> None:
        """Take a delivery that is gone (its record expired) out of the due set."""
        self.redis.zrem(keys.webhook_due(), delivery_id)

    def save_attempt(
        self, delivery: Delivery, attempt: Attempt, *, succeeded: bool, stop: bool, retry_after_s: float | None = None
    ) -> Delivery | None:
        """Record one attempt (appended to the delivery's attempts) and decide what comes next: done,
        failed, or due again later. A finished delivery keeps no body (a manual retry renders a fresh one);
        a failed ``completed`` one is filed with its tenant's failed deliveries. None, with nothing
        written, when the delivery is gone (its prediction's record expired during the attempt)."""
        delivery.attempts += 1
        delivery.last_outcome = attempt.outcome
        delay = None if succeeded or stop else self.next_delay(delivery, retry_after_s)
        delivery.state = DELIVERED if succeeded else FAILED if delay is None else PENDING
        delivery.next_attempt_at = None if delay is None else time.time() + delay
        saved = delivery.to_hash()
        if delivery.next_attempt_at is None:
            delivery.body = ""
            saved["body"] = json.dumps("")
        else:
            # The body stays as stored: data removal may have scrubbed it during the attempt.
            del saved["body"]
        now_us = int(time.time() * 1_000_000)
        fields = [item for pair in saved.items() for item in pair]
        kept = self._attempt_script(
            keys=[
                keys.webhook_delivery(delivery.id),
                keys.webhook_due(),
                keys.webhook_delivery_attempts(delivery.id),
                keys.tenant_failed_webhooks(delivery.tenant),
            ],
            args=[
                delivery.id,
                "" if delivery.next_attempt_at is None else delivery.next_attempt_at,
                self.kept_s,
                attempt.to_json(),
                MAX_ATTEMPTS_KEPT,
                "failed" if delivery.state == FAILED and listed_when_failed(delivery) else "",
                now_us,
                now_us - self.kept_s * 1_000_000,
                *fields,
            ],
        )
        return delivery if kept else None

    def next_delay(self, delivery: Delivery, retry_after_s: float | None) -> float | None:
        """Seconds until the next attempt, or None when the schedule is spent (or no retries apply)."""
        schedule = self.settings.webhook_retry_schedule_s
        if not delivery.retry or delivery.attempts > len(schedule):
            return None
        # ±10 % jitter spreads the retries of many predictions that failed together.
        delay = schedule[delivery.attempts - 1] * random.uniform(0.9, 1.1)
        return max(delay, retry_after_s or 0.0)


class WebhookNotifier:
    """Turns a prediction's state change into a recorded, enqueued webhook event."""

    def __init__(self, store: PredictionStore, outbox: WebhookOutbox, celery: Celery) -> None:
        self.store = store
        self.outbox = outbox
        self.celery = celery

    @cached_property
    def url_signer(self) -> UrlSigner:
        return UrlSigner.from_settings(self.outbox.settings, self.outbox.redis)

    def completed_recorded(self, prediction_ids: Sequence[str]) -> set[str]:
        return self.outbox.completed_recorded(prediction_ids)

    def notify(self, prediction: Prediction, event: str) -> Delivery | None:
        """Record ``event`` for ``prediction`` (any fresh copy of it: the body is read now) and enqueue it."""
        if not prediction.wants_event(event) or not self.outbox.passes_throttle(prediction.id, event):
            return None
        current = self.store.get(prediction.id)
        if current is None:
            return None
        rendered = render_prediction(current, current.base_url, self.url_signer, self.outbox.settings.retention_s)
        body = json.dumps(rendered)
        delivery = self.outbox.record(current, event, body)
        if delivery is None:  # its completed message was recorded already (by the follow-up of a missed ending)
            return None
        try:
            self.celery.send_task(queues.DELIVER_WEBHOOK_TASK, args=[delivery.id], queue=queues.WEBHOOKS)
        except Exception as exc:  # the poller sends it once the lease passes; never fail a prediction for it
            log.warning("webhook %s for %s not enqueued now (%s); the poller will send it", event, prediction.id, exc)
        return delivery
