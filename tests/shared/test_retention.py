"""Retention and record expiry (``shared.predictions.retention``) on fakeredis with Lua, and the list of keys
Kiln writes (``shared.db.keys``): each one declares how it stays bounded."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from datetime import timedelta

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction, utcnow
from shared.predictions.retention import Janitor, schedule
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.runtime.metrics import JANITOR_LAG

BOUND_KINDS = {"ttl", "record", "swept", "config", "channel"}


@dataclass
class RecordingStorage:
    """What the janitor deleted from S3."""

    deleted_prefixes: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def delete_prefix(self, prefix: str) -> int:
        self.deleted_prefixes.append(prefix)
        return 1

    def delete(self, key: str) -> None:
        self.deleted.append(key)


class QuietNotifier:
    def notify(self, prediction: Prediction, event: str) -> None:
        return None


def key_builders() -> list[str]:
    return [
        name
        for name, member in inspect.getmembers(keys, inspect.isfunction)
        if member.__module__ == keys.__name__ and not name.startswith("_")
    ]


def test_every_key_kiln_writes_declares_how_it_stays_bounded():
    builders = key_builders()
    assert builders, "shared.db.keys has key builders"
    undeclared = [name for name in builders if name not in keys.BOUNDS]
    assert not undeclared, f"keys without a bound in shared.db.keys.BOUNDS: {undeclared}"
    assert set(keys.BOUNDS) <= set(builders), "BOUNDS names a key builder that no longer exists"
    assert set(keys.BOUNDS.values()) <= BOUND_KINDS


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis(), retention_s=60, record_retention_s=600)


def finished_prediction(store: PredictionStore) -> Prediction:
    prediction = Prediction(
        tenant="t1",
        model="kiln/sd2-depth2img",
        version="v",
        input={"prompt": "a secret prompt", "input_image": "https://example.com/a.png"},
        input_files={"https://example.com/a.png": "predictions/x/inputs/input_image"},
        webhook="https://example.com/hook",
    )
    store.create(prediction)
    store.redis.set(keys.webhook_completed(prediction.id), "d1", ex=3600)
    store.redis.set(keys.webhook_latest_delivery(prediction.id, "start"), "d0", ex=3600)
    assert store.transition(prediction.id, Status.PROCESSING, started_at=prediction.created_at)
    assert store.append_log(prediction.id, "step 1/4\n")
    PredictionLifecycle(store, QuietNotifier()).finish(prediction, Status.SUCCEEDED, output=["out-0.png"])
    return prediction


def bring_forward(store: PredictionStore, member: str) -> None:
    store.redis.zadd(keys.retention(), {member: time.time() - 1})


def test_finishing_schedules_retention_and_record_expiry(store):
    prediction = finished_prediction(store)
    data_due = store.redis.zscore(keys.retention(), f"prediction:{prediction.id}")
    record_due = store.redis.zscore(keys.retention(), f"record:{prediction.id}")
    assert data_due == pytest.approx(time.time() + 60, abs=5)
    assert record_due == pytest.approx(time.time() + 600, abs=5)


def test_retention_clears_input_output_and_logs_and_keeps_the_rest(store):
    prediction = finished_prediction(store)
    storage = RecordingStorage()
    bring_forward(store, f"prediction:{prediction.id}")
    assert Janitor(store.redis, storage).sweep() == 1
    removed = store.get(prediction.id)
    assert removed is not None
    assert (removed.input, removed.input_files, removed.output, removed.logs) == ({}, {}, None, "")
    assert removed.data_removed
    assert (removed.status, removed.model, removed.version) == (Status.SUCCEEDED, prediction.model, prediction.version)
    assert removed.completed_at is not None and removed.started_at is not None
    assert storage.deleted_prefixes == [f"predictions/{prediction.id}/"]
    assert store.redis.zscore(keys.retention(), f"prediction:{prediction.id}") is None


def test_record_expiry_deletes_every_key_of_the_prediction(store):
    prediction = finished_prediction(store)
    for kind in ("prediction", "record"):
        bring_forward(store, f"{kind}:{prediction.id}")
    assert Janitor(store.redis, RecordingStorage()).sweep() == 2
    assert store.get(prediction.id) is None
    left = [k.decode() for k in store.redis.scan_iter(match=f"*{prediction.id}*")]
    assert left == []
    assert store.redis.zscore(keys.tenant_predictions("t1"), prediction.id) is None
    assert store.list_for_tenant("t1") == ([], False)


def test_record_expiry_takes_a_deadline_that_reached_past_it(store):
    """A finished prediction's Cancel-After (up to 7 days) stays in the deadline set until it is due; with
    KILN_RECORD_RETENTION_S shorter, it named a record that was gone."""
    prediction = Prediction(tenant="t1", model="m", version="v", input={}, deadline=utcnow() + timedelta(days=7))
    store.create(prediction)
    assert store.redis.zscore(keys.deadlines(), prediction.id) is not None
    Janitor(store.redis, RecordingStorage()).expire_record(prediction.id)
    assert store.redis.zscore(keys.deadlines(), prediction.id) is None


def test_retention_after_the_record_expired_does_not_bring_it_back(store):
    prediction = finished_prediction(store)
    janitor = Janitor(store.redis, RecordingStorage())
    janitor.expire_record(prediction.id)
    janitor.remove_data(prediction.id)
    assert not store.redis.exists(keys.prediction(prediction.id))


def test_expired_files_leave_their_tenants_list():
    redis = fakeredis.FakeRedis()
    storage = RecordingStorage()
    redis.zadd(keys.tenant_files("t1"), {"f1": 0, "f2": 0})
    schedule(redis, "file", "f1:t1", time.time() - 1)
    schedule(redis, "file", "f2:t1", time.time() + 600)
    Janitor(redis, storage).sweep()
    assert storage.deleted == ["files/f1"]
    assert [m.decode() for m in redis.zrange(keys.tenant_files("t1"), 0, -1)] == ["f2"]


def test_the_janitor_works_in_bounded_batches_and_reports_its_lag():
    redis = fakeredis.FakeRedis()
    now = time.time()
    for index in range(7):
        schedule(redis, "file", f"f{index}", now - 100 - index)
    janitor = Janitor(redis, RecordingStorage(), batch=2, max_batches=2)
    assert janitor.sweep() == 4
    assert redis.zcard(keys.retention()) == 3
    # The oldest left has waited about 100 s: the lag says so.
    assert JANITOR_LAG._value.get() == pytest.approx(100, abs=10)
    assert janitor.sweep() == 3
    assert JANITOR_LAG._value.get() == 0


def test_janitors_of_several_workers_share_the_work_instead_of_repeating_it():
    redis = fakeredis.FakeRedis()
    for index in range(4):
        schedule(redis, "file", f"f{index}", time.time() - 10)
    first, second = RecordingStorage(), RecordingStorage()
    # The first claims two items and dies before finishing them: the second must not take them.
    Janitor(redis, first)._claim(keys=[keys.retention()], args=[time.time(), 2, time.time() + 300])
    assert Janitor(redis, second).sweep() == 2
    assert len(second.deleted) == 2
    assert redis.zcard(keys.retention()) == 2, "the claimed ones wait for their claim to lapse"
