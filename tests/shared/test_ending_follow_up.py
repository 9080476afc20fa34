"""An ending is never left without its follow-up (``shared.predictions.lifecycle``): the status change files
the prediction in the ended set atomically, ``_ended`` takes it out once retention and the ``completed``
message are recorded (and held by the replicas), and ``follow_up_missed`` redoes what a killed process or a
failover left undone — recording one ``completed`` message per prediction however often it runs."""

from __future__ import annotations

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.settings import Settings
from shared.webhooks.outbox import WebhookNotifier, WebhookOutbox, completed_message_id
from tests.shared.test_batches import SentTasks


@pytest.fixture
def redis() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def _lifecycle(redis: fakeredis.FakeRedis, replication: object = None) -> PredictionLifecycle:
    store = PredictionStore(redis)
    notifier = WebhookNotifier(store, WebhookOutbox(redis, Settings(_env_file=None)), SentTasks())  # type: ignore[arg-type]
    return PredictionLifecycle(store, notifier, replication)  # type: ignore[arg-type]


def _running(store: PredictionStore, webhook: str | None = "https://receiver.example/hook") -> Prediction:
    prediction = Prediction(tenant="t", model="kiln/sd2-depth2img", version="v", input={}, webhook=webhook)
    store.create(prediction)
    store.transition(prediction.id, Status.PROCESSING)
    return prediction


def _ended(redis: fakeredis.FakeRedis) -> list[str]:
    return [member.decode() for member in redis.zrange(keys.predictions_ended(), 0, -1)]


def _completed_messages(redis: fakeredis.FakeRedis, prediction_id: str) -> list[str]:
    found = []
    for key in redis.scan_iter(match=keys.webhook_delivery("*")):
        fields = redis.hgetall(key)
        if fields[b"prediction_id"] == f'"{prediction_id}"'.encode() and fields[b"event"] == b'"completed"':
            found.append(key.decode())
    return found


def test_an_ending_followed_up_leaves_the_ended_set(redis) -> None:
    lifecycle = _lifecycle(redis)
    with_webhook, without = _running(lifecycle.store), _running(lifecycle.store, webhook=None)
    assert lifecycle.finish(with_webhook, Status.SUCCEEDED)
    assert lifecycle.finish(without, Status.FAILED, error="boom")
    assert _ended(redis) == []
    assert len(_completed_messages(redis, with_webhook.id)) == 1
    assert lifecycle.follow_up_missed(after_s=0) == 0


def test_the_status_change_itself_files_the_ending(redis) -> None:
    lifecycle = _lifecycle(redis)
    prediction = _running(lifecycle.store)
    assert _ended(redis) == []  # running is not an ending
    # The worker that made this change was killed before it followed it up.
    assert lifecycle.store.transition(prediction.id, Status.SUCCEEDED, completed_at=None)
    assert _ended(redis) == [prediction.id]
    assert _completed_messages(redis, prediction.id) == []

    assert lifecycle.follow_up_missed(after_s=60) == 0  # not yet: its own process may still be at it
    assert lifecycle.follow_up_missed(after_s=0) == 1
    assert len(_completed_messages(redis, prediction.id)) == 1
    assert redis.zscore(keys.retention(), f"prediction:{prediction.id}") is not None
    assert _ended(redis) == []


def test_a_follow_up_done_twice_records_one_completed_message(redis) -> None:
    lifecycle = _lifecycle(redis)
    prediction = _running(lifecycle.store)
    assert lifecycle.store.transition(prediction.id, Status.SUCCEEDED)
    # The job takes over while the slow original is still at it: both record, one message results.
    redis.zadd(keys.predictions_ended(), {prediction.id: 0})
    assert lifecycle.follow_up_missed(after_s=0) == 1
    lifecycle._ended([prediction], Status.SUCCEEDED)
    assert len(_completed_messages(redis, prediction.id)) == 1
    assert _ended(redis) == []


class FailoverAfterRecording:
    """A replication whose second confirmation happens on a promoted replica that never received the
    completed message recorded just before (the write the replicas had not confirmed yet is lost)."""

    replicas = 1

    def __init__(self, redis: fakeredis.FakeRedis) -> None:
        self.redis = redis
        self.settled = 0
        self.lost: list[str] = []

    def settle(self) -> bool:
        self.settled += 1
        if self.settled == 2:
            for key in self.redis.scan_iter(match=keys.webhook_delivery("*")):
                self.lost.append(key.decode())
                self.redis.delete(key)
            for key in self.redis.scan_iter(match=keys.webhook_completed("*")):
                self.redis.delete(key)
        return True


def test_a_completed_message_a_failover_lost_is_recorded_again(redis) -> None:
    replication = FailoverAfterRecording(redis)
    lifecycle = _lifecycle(redis, replication)
    prediction = _running(lifecycle.store)
    assert lifecycle.finish(prediction, Status.SUCCEEDED)
    assert replication.settled == 2  # once for the ending, once for its follow-up
    assert _completed_messages(redis, prediction.id) == []
    assert _ended(redis) == [prediction.id]  # kept for the follow-up job

    assert lifecycle.follow_up_missed(after_s=0) == 1
    # The same message again (its webhook-id the lost one's, which may have been sent already), not a
    # second one: a receiver deduplicates it.
    assert _completed_messages(redis, prediction.id) == replication.lost
    assert replication.lost == [keys.webhook_delivery(completed_message_id(prediction.id))]
    assert _ended(redis) == []


def test_an_ended_entry_whose_record_is_gone_is_dropped(redis) -> None:
    lifecycle = _lifecycle(redis)
    prediction = _running(lifecycle.store)
    assert lifecycle.store.transition(prediction.id, Status.CANCELED)
    redis.delete(keys.prediction(prediction.id))  # past record retention
    assert lifecycle.follow_up_missed(after_s=0) == 0
    assert _ended(redis) == []
