"""``shared.db.replication``: WAIT after a fence on one connection, on a real redis-server (no replica here:
the HA tests in tests/integration/test_redis_failover.py have one)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.db import keys
from shared.db.replication import NotReplicated, Replication
from shared.predictions.lifecycle import PredictionLifecycle
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore


@pytest.fixture
def client(tmp_path) -> Iterator[redis.Redis]:
    with RedisServer(tmp_path / "redis", appendonly=False) as server, redis.Redis.from_url(server.url) as client:
        yield client


def test_no_replicas_required_waits_for_nothing(client) -> None:
    Replication(client, 0, 5.0).confirm()
    assert client.get(keys.replication_fence()) is None


def test_a_replica_required_but_absent_is_refused_after_the_timeout(client) -> None:
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="0 of the 1 required replicas confirmed"):
        Replication(client, 1, 0.2).confirm()
    assert 0.15 < time.monotonic() - started < 5
    # The fence was written on the connection WAIT ran on.
    assert int(client.get(keys.replication_fence())) == 1


def test_settle_gives_up_after_its_tries_and_says_so(client, caplog) -> None:
    assert Replication(client, 1, 0.05).settle(tries=2) is False
    assert int(client.get(keys.replication_fence())) == 2
    assert "not confirmed by the replicas after 2 tries" in caplog.text


@pytest.fixture
def replicated(tmp_path) -> Iterator[redis.Redis]:
    """A primary with one replica in sync."""
    with (
        RedisServer(tmp_path / "primary", appendonly=False) as primary,
        RedisServer(tmp_path / "replica", appendonly=False, replica_of=primary.port) as replica,
        redis.Redis.from_url(primary.url) as client,
        redis.Redis.from_url(replica.url) as follower,
    ):
        deadline = time.monotonic() + 20
        while follower.info("replication").get("master_link_status") != "up":
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.05)
        yield client


def test_a_replica_confirms_and_what_was_written_must_still_be_there(replicated) -> None:
    replicated.set("written", "1")
    Replication(replicated, 1, 2.0).confirm(lambda: replicated.exists("written") == 1)
    # What a failover lost (the client retried the fence on the promoted replica, which never had it).
    with pytest.raises(NotReplicated):
        Replication(replicated, 1, 2.0).confirm(lambda: replicated.exists("lost") == 1)


class Settled:
    """A replication whose confirmation is done (the lifecycle asks it to settle, then reads back)."""

    replicas = 1

    def settle(self) -> bool:
        return True


def test_an_ending_a_failover_undid_records_no_webhook() -> None:
    store = PredictionStore(fakeredis.FakeRedis())
    notified: list[str] = []

    class Notifier:
        def notify(self, prediction: Prediction, event: str) -> None:
            notified.append(prediction.id)

        def completed_recorded(self, prediction_ids: list[str]) -> set[str]:
            return set(prediction_ids)

    lifecycle = PredictionLifecycle(store, Notifier(), Settled())  # type: ignore[arg-type]
    kept, undone = (Prediction(tenant="t", model="kiln/sd2-depth2img", version="v", input={}) for _ in range(2))
    for prediction in (kept, undone):
        store.create(prediction)
        store.transition(prediction.id, Status.PROCESSING)
    assert lifecycle.finish(kept, Status.SUCCEEDED)
    # The other's ending is written, then undone (as a promoted replica that never had it would read).
    assert store.transition(undone.id, Status.SUCCEEDED)
    store.redis.hset(keys.prediction(undone.id), "status", '"processing"')
    lifecycle._ended([undone], Status.SUCCEEDED)
    assert notified == [kept.id]
