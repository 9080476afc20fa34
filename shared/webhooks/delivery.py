"""Webhook delivery: attempt one recorded delivery (``shared.webhooks.outbox``), signed, to the
address that was checked, and record the outcome. What the ``kiln.deliver_webhook`` task runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache

import httpx
from celery import Celery

from shared.predictions.client_json import refresh_output_urls
from shared.predictions.store import PredictionStore
from shared.runtime.metrics import record_webhook_delivery
from shared.runtime.worker_process import WorkerProcess
from shared.scheduling import queues
from shared.security.signed_urls import UrlSigner
from shared.security.ssrf import URLRefused, guarded_request
from shared.settings import Settings
from shared.webhooks.outbox import DELIVERED, FAILED, PENDING, Attempt, Delivery, WebhookOutbox
from shared.webhooks.secrets import WebhookSecrets
from shared.webhooks.signing import THROTTLED_EVENTS, signature_headers

log = logging.getLogger(__name__)

# Seconds to wait before re-checking a ``completed`` delivery whose earlier events have not gone out yet.
ORDERING_DELAY_S = 0.2
MAX_RETRY_AFTER_S = 24 * 3600.0
# A delivery's state after an attempt, as the kiln_webhook_deliveries outcome label.
DELIVERY_OUTCOMES = {DELIVERED: "delivered", PENDING: "retrying", FAILED: "failed"}


@dataclass(frozen=True)
class SignedBody:
    """What one attempt sends: the body (output URLs signed afresh) and the secrets that sign it."""

    body: str
    secrets: list[str]


# Turns a delivery into what one attempt sends (``DeliverySigner``; tests pass stand-ins).
Signing = Callable[[Delivery], SignedBody]


class DeliverySigner:
    """Signs each delivery with its tenant's secrets (the current one, and the previous during a
    rotation's overlap) and renews the signed output URLs in its body, so a retry hours later still
    links to files that can be fetched."""

    def __init__(self, secrets: WebhookSecrets, store: PredictionStore, urls: UrlSigner, retention_s: float) -> None:
        self.secrets = secrets
        self.store = store
        self.urls = urls
        self.retention_s = retention_s

    def tenant(self, delivery: Delivery) -> str | None:
        if delivery.tenant:
            return delivery.tenant
        prediction = self.store.get(delivery.prediction_id)  # recorded before secrets were per tenant
        return prediction.tenant if prediction else None

    def __call__(self, delivery: Delivery) -> SignedBody:
        tenant = self.tenant(delivery)
        if tenant is None:
            return SignedBody(delivery.body, [])
        return SignedBody(
            refresh_output_urls(delivery.body, self.urls, self.retention_s), self.secrets.signing_keys(tenant)
        )


@dataclass(frozen=True)
class AttemptResult:
    outcome: str
    succeeded: bool
    # Retrying cannot help: 410 Gone, or a URL that may not be called.
    stop: bool = False
    retry_after_s: float | None = None
    # The receiver's answer; None when there was none (``outcome`` says why).
    status_code: int | None = None

    def attempt(self, started_at: float, duration_s: float) -> Attempt:
        """The attempt as its delivery's history keeps it."""
        error = None if self.status_code is not None else self.outcome
        return Attempt(started_at, self.status_code, error, round(duration_s * 1000))


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), capped at a day."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def post_signed(delivery: Delivery, signed: SignedBody, settings: Settings) -> AttemptResult:
    """POST the body once. Redirects are failures and are not followed."""
    if not signed.secrets:
        return AttemptResult("refused: the prediction's tenant is unknown, so nothing can sign it", False, stop=True)
    headers = signature_headers(signed.secrets, delivery.id, datetime.now(UTC), signed.body) | {
        "content-type": "application/json",
        "user-agent": "kiln-webhooks/1",
    }
    try:
        with guarded_request(
            "POST",
            delivery.url,
            allow_private=settings.webhook_allow_private,
            timeout_s=settings.webhook_timeout_s,
            headers=headers,
            content=signed.body.encode(),
        ) as response:
            pass  # only the status and headers count: a receiver's body is never read
    except URLRefused as exc:
        return AttemptResult(f"refused: {exc}", succeeded=False, stop=True)
    except httpx.TimeoutException:
        return AttemptResult(f"timed out after {settings.webhook_timeout_s:g} s", succeeded=False)
    except httpx.HTTPError as exc:
        return AttemptResult(f"network error: {exc}", succeeded=False)
    outcome = f"HTTP {response.status_code}"
    if 200 <= response.status_code < 300:
        return AttemptResult(outcome, succeeded=True, status_code=response.status_code)
    return AttemptResult(
        outcome,
        succeeded=False,
        stop=response.status_code == 410,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
        status_code=response.status_code,
    )


def attempt_delivery(outbox: WebhookOutbox, delivery_id: str, signing: Signing, settings: Settings) -> Delivery | None:
    """Attempt a pending delivery once and record the outcome. Returns it, or None when skipped."""
    delivery = outbox.get(delivery_id)
    if delivery is None:
        outbox.forget_due(delivery_id)  # removed with its prediction's record: nothing left to send
        return None
    if delivery.state != PENDING:
        return None
    if delivery.event == "completed" and outbox.completed_must_wait(delivery):
        outbox.postpone(delivery, ORDERING_DELAY_S)  # start, output and progress events land first
        return None
    if not outbox.lock_attempt(delivery_id):
        return None
    if not outbox.take_sending_place(delivery):  # its tenant's places are all taken: it waits for one
        outbox.unlock_attempt(delivery_id)
        return None
    progress = delivery.event in THROTTLED_EVENTS
    started_at, started = time.time(), time.monotonic()
    try:
        if progress and not outbox.begin_progress(delivery.prediction_id, delivery.event):
            result = AttemptResult(
                "superseded: the prediction's completed event is already recorded", succeeded=False, stop=True
            )
        else:
            try:
                result = post_signed(delivery, signing(delivery), settings)
            finally:
                if progress:
                    outbox.end_progress(delivery.prediction_id)
        attempt = result.attempt(started_at, time.monotonic() - started)
        saved = outbox.save_attempt(
            delivery, attempt, succeeded=result.succeeded, stop=result.stop, retry_after_s=result.retry_after_s
        )
    finally:
        outbox.leave_sending_place(delivery)
        outbox.unlock_attempt(delivery_id)
    if saved is None:
        log.info("webhook %s: its prediction's record expired during the attempt; not kept", delivery.id)
        return None
    delivery = saved
    log.info(
        "webhook %s %s for prediction %s attempt %d: %s -> %s",
        delivery.id,
        delivery.event,
        delivery.prediction_id,
        delivery.attempts,
        result.outcome,
        delivery.state,
        extra={"prediction_id": delivery.prediction_id},
    )
    record_webhook_delivery(delivery.event, DELIVERY_OUTCOMES.get(delivery.state, delivery.state))
    return delivery


@cache
def delivery_signer(process: WorkerProcess) -> DeliverySigner:
    """The worker process's signer, built on first use."""
    settings = process.settings
    return DeliverySigner(
        WebhookSecrets(process.redis, settings.webhook_secret_overlap_s),
        process.core.store,
        process.core.notifier.url_signer,
        settings.retention_s,
    )


def add_delivery_task(celery: Celery, process: WorkerProcess) -> None:
    """Register ``kiln.deliver_webhook`` on ``celery``: a worker that consumes the ``webhooks`` queue
    (the webhook worker, or a GPU worker told to) attempts each delivery it is sent."""

    def deliver_webhook(delivery_id: str) -> None:
        delivery = attempt_delivery(process.core.outbox, delivery_id, delivery_signer(process), process.settings)
        if delivery is not None and delivery.event == "completed":  # retention_s 0 waited for this attempt
            process.core.store.completed_webhook_attempted(delivery.prediction_id)

    # Celery is untyped: registered by a call, not a decorator (mypy's strict checks hold in shared/).
    celery.task(name=queues.DELIVER_WEBHOOK_TASK, shared=False)(deliver_webhook)
