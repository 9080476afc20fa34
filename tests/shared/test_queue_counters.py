"""Queued-prediction counters (backpressure, GET /v1/queue): they move with every way a prediction
enters or leaves ``starting``, and the caps admit a batch whole or not at all (fakeredis with Lua)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from shared.predictions.leases import Leases
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.scheduling.queue_counters import QueueFull

SD2, SDXL = "gpu.sd2-depth", "gpu.sdxl"


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis())


def queued(tenant: str = "t1", queue: str = SD2) -> Prediction:
    return Prediction(tenant=tenant, model="kiln/sd2-depth2img", version="v", queue=queue, input={"prompt": "x"})


def depth(store: PredictionStore, tenant: str = "t1") -> tuple[int, dict[str, int]]:
    found = store.queued.depth(tenant)
    return found.tenant, found.families


def test_create_counts_per_tenant_and_family(store):
    store.create_many([queued(), queued(), queued(queue=SDXL)])
    store.create(queued(tenant="t2"))
    assert depth(store) == (3, {SD2: 3, SDXL: 1})
    assert depth(store, "t2")[0] == 1
    assert store.queued.depth("t1").total == 4


def test_start_cancel_and_fail_leave_the_queue(store):
    started, canceled, failed = queued(), queued(), queued()
    store.create_many([started, canceled, failed])
    assert Leases(store.redis, lease_s=30).start(started.id) == 1
    assert store.request_cancel(canceled.id) is Status.STARTING
    assert store.transition(failed.id, Status.FAILED, error="queue down")
    assert depth(store) == (0, {})


def test_cancel_of_a_running_prediction_does_not_count_twice(store):
    p, other = queued(), queued()
    store.create_many([p, other])
    Leases(store.redis, lease_s=30).start(p.id)
    store.request_cancel(p.id)
    assert store.transition(p.id, Status.CANCELED)
    assert depth(store) == (1, {SD2: 1})


def test_hand_back_and_reap_requeue_count_again(store):
    leases = Leases(store.redis, lease_s=30)
    handed, reaped = queued(), queued()
    store.create_many([handed, reaped])
    attempt = leases.start(handed.id)
    leases.start(reaped.id)
    assert depth(store) == (0, {})
    assert store.transition(handed.id, Status.STARTING, if_attempt=attempt, attempt=attempt - 1)
    assert depth(store) == (1, {SD2: 1})
    store.redis.zadd("kiln:running", {reaped.id: time.time() - 1})
    assert leases.reap(reaped.id, max_attempts=3) is Status.STARTING
    assert depth(store) == (2, {SD2: 2})
    # A duplicate start of an already started prediction changes nothing.
    assert leases.start(handed.id) == 1 and leases.start(handed.id) is None
    assert depth(store) == (1, {SD2: 1})


def test_tenant_cap_refuses_a_batch_whole(store):
    store.create_many([queued(), queued()], tenant_cap=3)
    with pytest.raises(QueueFull) as refused:
        store.create_many([queued(), queued()], tenant_cap=3)
    assert refused.value.scope == "tenant"
    assert depth(store) == (2, {SD2: 2})
    assert len(store.list_for_tenant("t1")[0]) == 2
    store.create(queued(), tenant_cap=3)
    store.create(queued(tenant="t2"), tenant_cap=3)  # another tenant has its own room


def test_global_cap_counts_every_tenant(store):
    store.create_many([queued("t1"), queued("t1", SDXL)], total_cap=3)
    with pytest.raises(QueueFull) as refused:
        store.create_many([queued("t2"), queued("t2")], total_cap=3)
    assert refused.value.scope == "global"
    assert depth(store, "t2") == (0, {SD2: 1, SDXL: 1})
    assert store.list_for_tenant("t2")[0] == []


def test_room_comes_back_when_predictions_start(store):
    first = queued()
    store.create(first, tenant_cap=1)
    with pytest.raises(QueueFull):
        store.create(queued(), tenant_cap=1)
    Leases(store.redis, lease_s=30).start(first.id)
    store.create(queued(), tenant_cap=1)


@pytest.mark.parametrize(("tenant_cap", "total_cap", "scope", "cap"), [(10, 3, "global", 3), (3, 10, "tenant", 3)])
def test_more_than_a_cap_allows_at_all_is_refused_by_that_cap_whatever_is_queued(
    store, tenant_cap, total_cap, scope, cap
):
    """5 can never fit under a cap of 3: refused by that cap (a 422, no Retry-After), even while the other
    cap is the one the queue fills first (8 of the tenant's 10 queued)."""
    for _ in range(8 if scope == "global" else 0):
        store.queued.admit("t1", [SD2], 10**6, 10**6)
    with pytest.raises(QueueFull) as refused:
        store.queued.admit("t1", [SD2] * 5, tenant_cap, total_cap)
    assert (refused.value.scope, refused.value.cap) == (scope, cap)
