"""No progress event (``output``/``logs``) reaches a receiver after its prediction's ``completed``
event: a stale ``logs`` event is dropped, an ``output`` event is sent and ``completed`` waits for it."""

from __future__ import annotations

import fakeredis
import pytest

from shared.predictions.record import Prediction
from shared.settings import Settings
from shared.webhooks import delivery as webhook_delivery
from shared.webhooks.delivery import AttemptResult, SignedBody, attempt_delivery
from shared.webhooks.outbox import DELIVERED, FAILED, PENDING, WebhookOutbox


def signing(delivery):
    return SignedBody(delivery.body, ["whsec_x"])


@pytest.fixture
def outbox() -> WebhookOutbox:
    settings = Settings(_env_file=None, webhook_allow_private=True)
    return WebhookOutbox(fakeredis.FakeRedis(), settings)


@pytest.fixture
def prediction() -> Prediction:
    return Prediction(tenant="t", model="kiln/sd2-depth2img", version="v", input={}, webhook="http://127.0.0.1:9/hook")


@pytest.fixture
def posted(monkeypatch) -> list[str]:
    sent: list[str] = []

    def fake_post(delivery, signed, settings):
        sent.append(delivery.event)
        return AttemptResult("HTTP 200", succeeded=True)

    monkeypatch.setattr(webhook_delivery, "post_signed", fake_post)
    return sent


def test_a_logs_event_recorded_before_completed_but_sent_after_it_is_dropped(outbox, prediction, posted):
    logs = outbox.record(prediction, "logs", "{}")
    completed = outbox.record(prediction, "completed", "{}")

    assert attempt_delivery(outbox, completed.id, signing, outbox.settings).state == DELIVERED
    stale = attempt_delivery(outbox, logs.id, signing, outbox.settings)

    assert posted == ["completed"]
    assert stale.state == FAILED and stale.last_outcome.startswith("superseded")


def test_completed_waits_while_a_progress_event_is_in_flight(outbox, prediction, posted):
    completed = outbox.record(prediction, "completed", "{}")
    assert outbox.begin_progress(prediction.id, "logs") is False  # completed recorded: logs are stale now

    other = prediction.model_copy(update={"id": "other"})
    assert outbox.begin_progress(other.id, "logs") is True  # a logs event of a running prediction is attempted
    other_completed = outbox.record(other, "completed", "{}")

    assert attempt_delivery(outbox, other_completed.id, signing, outbox.settings) is None  # postponed, not sent
    assert outbox.get(other_completed.id).state == PENDING and posted == []
    outbox.end_progress(other.id)
    assert attempt_delivery(outbox, other_completed.id, signing, outbox.settings).state == DELIVERED
    assert attempt_delivery(outbox, completed.id, signing, outbox.settings).state == DELIVERED
    assert posted == ["completed", "completed"]


def test_progress_events_of_a_running_prediction_are_sent(outbox, prediction, posted):
    first = outbox.record(prediction, "output", "{}")
    second = outbox.record(prediction, "logs", "{}")
    assert attempt_delivery(outbox, first.id, signing, outbox.settings).state == DELIVERED
    assert attempt_delivery(outbox, second.id, signing, outbox.settings).state == DELIVERED
    assert posted == ["output", "logs"]
    assert not outbox.progress_in_flight(prediction.id)


def test_completed_waits_for_the_output_event_which_is_never_dropped(outbox, prediction, posted):
    output = outbox.record(prediction, "output", "{}")
    completed = outbox.record(prediction, "completed", "{}")

    assert attempt_delivery(outbox, completed.id, signing, outbox.settings) is None  # the output goes first
    assert attempt_delivery(outbox, output.id, signing, outbox.settings).state == DELIVERED
    assert attempt_delivery(outbox, completed.id, signing, outbox.settings).state == DELIVERED
    assert posted == ["output", "completed"]
