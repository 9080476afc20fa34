"""A prediction's own ``retention_s`` (``shared.predictions.retention.data_kept_s``, scheduled by
``PredictionStore.schedule_retention``), kept 0 s until its ``completed`` webhook was attempted, and
``DataRemoval`` (what ``DELETE`` and the janitor run), on fakeredis with Lua."""

from __future__ import annotations

import time

import fakeredis
import orjson
import pytest

from shared.db import keys
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.retention import ZERO_RETENTION_WEBHOOK_WAIT_S, DataRemoval, Janitor, data_kept_s
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from tests.shared.test_retention import QuietNotifier, RecordingStorage

HOOK = "https://example.com/hook"
DEFAULT_S = 3600


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis(), retention_s=DEFAULT_S, record_retention_s=7200)


def ended(store: PredictionStore, **fields: object) -> Prediction:
    """A prediction created with ``fields`` that ended (canceled while queued: the lifecycle's own path)."""
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "p"}, **fields)
    store.create(prediction)
    PredictionLifecycle(store, QuietNotifier()).cancel(prediction)
    return prediction


def data_due_in(store: PredictionStore, prediction_id: str) -> float | None:
    due = store.redis.zscore(keys.retention(), f"prediction:{prediction_id}")
    return None if due is None else due - time.time()


@pytest.mark.parametrize(
    ("own_s", "awaits_webhook", "kept_s"),
    [
        (None, False, DEFAULT_S),
        (None, True, DEFAULT_S),
        (30, True, 30),
        (0, False, 0),
        (0, True, ZERO_RETENTION_WEBHOOK_WAIT_S),
        # KILN_RETENTION_S lowered after the prediction was created: it still bounds every prediction.
        (DEFAULT_S * 2, False, DEFAULT_S),
    ],
)
def test_data_is_kept_for_its_own_retention_within_the_global_one(own_s, awaits_webhook, kept_s):
    assert data_kept_s(DEFAULT_S, own_s, awaits_webhook) == kept_s


def test_a_zero_retention_never_waits_longer_for_its_webhook_than_the_global_retention():
    assert data_kept_s(60, 0, True) == 60


@pytest.mark.parametrize(
    ("fields", "kept_s"),
    [
        ({}, DEFAULT_S),
        ({"retention_s": 30}, 30),
        ({"retention_s": 0}, 0),
        ({"retention_s": 0, "webhook": HOOK}, ZERO_RETENTION_WEBHOOK_WAIT_S),
        ({"retention_s": 0, "webhook": HOOK, "webhook_events_filter": ["completed"]}, ZERO_RETENTION_WEBHOOK_WAIT_S),
        # Its webhook does not want the completed event: nothing to wait for.
        ({"retention_s": 0, "webhook": HOOK, "webhook_events_filter": ["start"]}, 0),
    ],
)
def test_an_ending_schedules_its_data_removal_after_its_own_retention(store, fields, kept_s):
    prediction = ended(store, **fields)
    assert data_due_in(store, prediction.id) == pytest.approx(kept_s, abs=5)
    assert store.redis.zscore(keys.retention(), f"record:{prediction.id}") == pytest.approx(time.time() + 7200, abs=5)


def test_a_batch_items_retention_is_read_from_the_fields_it_shares_with_its_twins(store):
    shared = keys.batch_shared_fields("b1", 0)
    store.redis.hset(shared, mapping={"retention_s": orjson.dumps(0), "webhook": orjson.dumps(HOOK)})
    own = Prediction(tenant="t1", model="m", version="v", input={}, batch_id="b1").to_compact_hash()
    twins = ["item-1", "item-2"]
    store.create_records([(own | {"shared_fields": orjson.dumps(shared)}, twins)], lambda pipe: None)
    # One twin sets its own field, which wins over the shared one.
    store.redis.hset(keys.prediction("item-2"), "retention_s", orjson.dumps(20))
    store.schedule_retention(twins)
    assert data_due_in(store, "item-1") == pytest.approx(ZERO_RETENTION_WEBHOOK_WAIT_S, abs=5)
    assert data_due_in(store, "item-2") == pytest.approx(20, abs=5)


def test_the_completed_webhooks_attempt_brings_a_zero_retention_forward_only(store):
    zero = ended(store, retention_s=0, webhook=HOOK)
    kept = ended(store, retention_s=30, webhook=HOOK)
    store.completed_webhook_attempted(zero.id)
    store.completed_webhook_attempted(kept.id)
    assert data_due_in(store, zero.id) == pytest.approx(0, abs=5)
    assert data_due_in(store, kept.id) == pytest.approx(30, abs=5)


def test_an_attempt_after_the_data_was_removed_schedules_nothing_again(store):
    zero = ended(store, retention_s=0, webhook=HOOK)
    store.completed_webhook_attempted(zero.id)
    assert Janitor(store.redis, RecordingStorage()).sweep() == 1
    store.completed_webhook_attempted(zero.id)  # a retry of the webhook
    assert data_due_in(store, zero.id) is None
    # A batch's completed webhook (its delivery names the batch): no prediction of that id, nothing done.
    store.completed_webhook_attempted("a-batch-id")
    assert store.redis.zscore(keys.retention(), "prediction:a-batch-id") is None


def test_data_removal_deletes_every_prefix_then_marks_each_record_and_twice_changes_nothing(store):
    first, second = ended(store), ended(store)
    store.redis.append(keys.prediction_logs(first.id), "step 1/4\n")
    storage = RecordingStorage()
    removal = DataRemoval(store.redis, storage)
    for _ in range(2):
        removal.remove([first.id, second.id, "never-stored"])
        for prediction_id in (first.id, second.id):
            removed = store.get(prediction_id)
            assert removed is not None and removed.data_removed
            assert (removed.input, removed.logs, removed.status) == ({}, "", Status.CANCELED)
    assert sorted(storage.deleted_prefixes) == sorted(
        2 * [f"predictions/{first.id}/", f"predictions/{second.id}/", "predictions/never-stored/"]
    )
    assert not store.redis.exists(keys.prediction("never-stored")), "no record is made for an unknown id"


def test_a_batchs_shared_inputs_go_and_the_batch_is_marked_while_its_record_lasts():
    redis = fakeredis.FakeRedis()
    redis.hset(keys.batch_record("b1"), mapping={"id": "b1"})
    redis.expire(keys.batch_record("b1"), 600)
    storage = RecordingStorage()
    removal = DataRemoval(redis, storage)
    removal.remove_batch_inputs("b1")
    removal.remove_batch_inputs("gone")
    assert storage.deleted_prefixes == ["batches/b1/", "batches/gone/"]
    assert redis.hget(keys.batch_record("b1"), "data_removed") == b"1"
    assert redis.ttl(keys.batch_record("b1")) > 0
    assert not redis.exists(keys.batch_record("gone"))
