"""``shared.db.replication``: WAIT after a fence on one connection, on a real redis-server (no replica here:
the HA tests in tests/integration/test_redis_failover.py have one)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.db import keys
from shared.db.replication import NotReplicated, Replication


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
