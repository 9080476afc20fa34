"""A status change whose reply was lost (a dropped connection, a failover) is sent again by redis-py's
retry with the same arguments: the scripts recognise their own change by its token, answer as the
first run did, and change nothing twice (counters, batch counts, the announcement to waiters)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import fakeredis
import pytest
from redis.client import PubSub

from shared.db import keys
from shared.predictions import store as store_module
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis())


@pytest.fixture
def one_token(monkeypatch) -> Iterator[None]:
    """Every call sends the same token: the second call of a test is the first one's retry."""
    monkeypatch.setattr(store_module, "_token", lambda: json.dumps("retried-call"))
    yield


def make(store: PredictionStore) -> Prediction:
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
    store.create(prediction)
    return prediction


def queued(store: PredictionStore) -> int:
    return int(store.redis.hget(keys.queued_by_tenant(), "t1") or 0)


def announcements(store: PredictionStore, prediction_id: str) -> PubSub:
    """A subscriber to the prediction's channel, where waiters are told of its status changes."""
    pubsub = store.redis.pubsub()
    pubsub.subscribe(keys.prediction_events(prediction_id))
    pubsub.get_message(timeout=0.1)  # the subscription's confirmation
    return pubsub


def drained(pubsub: PubSub) -> list[dict]:
    """What the subscriber was told so far."""
    messages = []
    while (message := pubsub.get_message(timeout=0.05)) is not None:
        messages.append(json.loads(message["data"]))
    return messages


def test_a_retried_terminal_transition_answers_applied_and_changes_nothing_twice(store, one_token) -> None:
    p = make(store)
    assert store.transition(p.id, Status.PROCESSING, attempt=1)
    listening = announcements(store, p.id)
    assert store.transition(p.id, Status.SUCCEEDED, if_attempt=1, output=["out-0.png"])
    first = store.redis.hgetall(keys.prediction(p.id))
    # The retry: same call, same token. Applied (the caller goes on to record its webhook), nothing moves.
    assert store.transition(p.id, Status.SUCCEEDED, if_attempt=1, output=["other.png"])
    assert store.redis.hgetall(keys.prediction(p.id)) == first
    assert drained(listening) == [{"status": "succeeded"}]


def test_another_call_to_the_same_status_is_still_refused(store) -> None:
    p = make(store)
    assert store.transition(p.id, Status.PROCESSING)
    assert store.transition(p.id, Status.SUCCEEDED)
    assert not store.transition(p.id, Status.SUCCEEDED)
    assert not store.transition(p.id, Status.FAILED)


def test_a_retried_cancel_of_a_queued_prediction_reports_what_the_first_found(store, one_token) -> None:
    p = make(store)
    assert queued(store) == 1
    listening = announcements(store, p.id)
    assert store.request_cancel(p.id) is Status.STARTING
    assert queued(store) == 0
    # Without the token the retry would report "canceled": the caller would think someone else ended it
    # and record no webhook.
    assert store.request_cancel(p.id) is Status.STARTING
    assert queued(store) == 0
    assert drained(listening) == [{"status": "canceled"}]
    assert store.get(p.id).status is Status.CANCELED


def test_a_second_cancel_finds_it_canceled(store) -> None:
    p = make(store)
    assert store.request_cancel(p.id) is Status.STARTING
    assert store.request_cancel(p.id) is Status.CANCELED
