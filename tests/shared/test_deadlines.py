"""Deadlines (``Cancel-After``): the duration format, and the maintenance job that aborts queued
predictions past theirs and flags running ones (fakeredis with Lua, no servers)."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.deadlines import BadDuration, expire_due, parse_duration
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction, utcnow
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from tests.support.lifecycle import record_endings


class Notifications:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def notify(self, prediction: Prediction, event: str) -> None:
        self.events.append((prediction.id, event))


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("250ms", 0.25), (" 2m3s ", 123)]
)
def test_replicate_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "5 minutes", "-5s", "0s", "1d", "s", "1h 30m", "1e3s", "200h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(BadDuration):
        parse_duration(text)


def make(store: PredictionStore, deadline_in_s: float) -> Prediction:
    prediction = Prediction(
        tenant="t1",
        model="kiln/sd2-depth2img",
        version="v",
        queue="gpu.sd2-depth",
        input={"prompt": "x"},
        deadline=utcnow() + timedelta(seconds=deadline_in_s),
    )
    store.create(prediction)
    return prediction


def test_a_queued_prediction_past_its_deadline_ends_aborted_once(monkeypatch):
    ended = record_endings(monkeypatch)
    store = PredictionStore(fakeredis.FakeRedis())
    notifications = Notifications()
    lifecycle = PredictionLifecycle(store, notifications)
    due, later = make(store, -1), make(store, 3600)
    assert expire_due(lifecycle, store.redis) == 1
    assert store.status(due.id) is Status.ABORTED and store.status(later.id) is Status.STARTING
    assert json.loads(store.redis.hget(keys.prediction(due.id), "completed_at"))
    assert ended == [(due.id, Status.ABORTED)]
    assert notifications.events == [(due.id, "completed")]
    assert store.queued.depth("t1").tenant == 1  # the aborted one left the queued count
    # Handled once: the next run finds nothing due.
    assert expire_due(lifecycle, store.redis) == 0 and ended == [(due.id, Status.ABORTED)]
    assert expire_due(lifecycle, store.redis, now=time.time() + 7200) == 1


def test_a_running_prediction_past_its_deadline_is_flagged_to_cancel(monkeypatch):
    ended = record_endings(monkeypatch)
    store = PredictionStore(fakeredis.FakeRedis())
    lifecycle = PredictionLifecycle(store, Notifications())
    running = make(store, -1)
    store.transition(running.id, Status.PROCESSING)
    expire_due(lifecycle, store.redis)
    assert store.status(running.id) is Status.PROCESSING and store.cancel_requested(running.id)
    assert ended == []


def test_the_deadline_is_rendered_and_stored():
    store = PredictionStore(fakeredis.FakeRedis())
    prediction = make(store, 30)
    stored = store.get(prediction.id)
    assert stored is not None and stored.deadline == prediction.deadline
    assert store.redis.zscore(keys.deadlines(), prediction.id) == pytest.approx(prediction.deadline.timestamp())
