"""How Kiln's Redis clients retry (``shared.db.client``): a failed try is tried again while the command's
``RETRY_BUDGET_S`` lasts. redis-py retries a new connection's connect inside each try of a command, so
counted tries alone multiplied: a paused Redis held an API request 160 s (a 500 after it), sentinels with
no primary to name 83 s. And behind Sentinel each retry asks the sentinels where the primary is."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError, TimeoutError

from deploy.devstack.servers import RedisServer
from shared.db import client as db_client
from shared.db.client import connect, connect_async
from tests.support import paused, run_on_own_loop
from tests.support.redis_ha import RedisHA, redis_ha

SOCKET_TIMEOUT_S = 0.5
# The budget in the same ratio to the socket timeout as in production (15 s to 10 s): room for one retry.
BUDGET_S = 0.75


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path, appendonly=False) as found:
        yield found


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    with redis_ha(tmp_path / "redis-ha") as running:
        yield running


def connections_received(server: RedisServer) -> int:
    """Connections the server has accepted, this question's own included (a paused server accepts those
    its backlog holds once continued, before this question's)."""
    with redis.Redis.from_url(server.url) as asking:
        return int(asking.info("stats")["total_connections_received"])


def sync_opened(server: RedisServer, connected: bool) -> int:
    """Connections a GET opened on a paused Redis before it failed with a timeout."""
    client = connect(server.url, socket_timeout=SOCKET_TIMEOUT_S)
    if connected:
        client.ping()
    before = connections_received(server)
    with paused(server.pid), pytest.raises(TimeoutError):
        client.get("k")
    return connections_received(server) - before - 1


def async_opened(server: RedisServer, connected: bool) -> int:
    """The same with the asyncio client."""

    async def run() -> int:
        client = connect_async(server.url, socket_timeout=SOCKET_TIMEOUT_S)
        try:
            if connected:
                await client.ping()
            before = connections_received(server)
            with paused(server.pid), pytest.raises(TimeoutError):
                await client.get("k")
            return connections_received(server) - before - 1
        finally:
            await client.aclose()

    return run_on_own_loop(run())


@pytest.mark.parametrize("connected", [True, False], ids=["open connection", "new connection"])
@pytest.mark.parametrize("opened", [sync_opened, async_opened], ids=["sync", "async"])
def test_a_paused_redis_times_a_command_out_within_the_budget(
    server: RedisServer, opened: Callable[[RedisServer, bool], int], connected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_client, "RETRY_BUDGET_S", BUDGET_S)
    # Two tries, on its open connection and one new one, or on two new ones (redis-py's counted retries
    # opened 12 and 16: three more tries of the command, each connecting four times).
    assert opened(server, connected) == (1 if connected else 2)


def test_a_restarted_redis_is_ridden_out_by_retrying(server: RedisServer) -> None:
    client = connect(server.url, socket_timeout=SOCKET_TIMEOUT_S)
    client.set("k", "v")
    server.stop()
    server.start()
    assert client.get("k") is None  # the old connection failed fast (reset): retried on a new one


def test_sentinels_with_no_primary_to_name_fail_a_command_within_the_budget(
    ha: RedisHA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_client, "RETRY_BUDGET_S", 2.0)

    async def run() -> float:
        client = connect_async(ha.target)
        try:
            await client.set("k", "v")
            ha.replica.kill()
            ha.kill_primary()
            started = time.monotonic()
            with pytest.raises(ConnectionError):
                await client.get("k")
            return time.monotonic() - started
        finally:
            await client.aclose()

    # Each try of the command retried its connect SENTINEL_RETRIES times (~7.5 s), and the command was
    # tried SENTINEL_RETRIES times: 83 s. Now no try starts after the budget: one more connect at most.
    assert run_on_own_loop(run()) < 2.0 + 9.0


@contextmanager
def killed(ha: RedisHA) -> Iterator[None]:
    """SIGKILL, the command sent at once (``kill_primary`` waits for the process: by then the pool finds the
    connection dead before lending it, and its connect asks the sentinels)."""
    assert ha.primary.pid is not None
    os.kill(ha.primary.pid, signal.SIGKILL)
    yield


@pytest.mark.parametrize("stopped", [lambda ha: paused(ha.primary.pid), killed], ids=["paused", "killed"])
def test_behind_sentinel_one_command_rides_out_the_primary_to_the_promoted_replica(ha: RedisHA, stopped) -> None:
    writer = connect(ha.target)
    writer.set("k", "v")
    assert writer.wait(1, 5000) == 1  # on the replica too
    client = connect(ha.target, socket_timeout=SOCKET_TIMEOUT_S)
    assert client.ping()  # a connection open to the primary
    with stopped(ha):
        # Its tries time out on (or are refused by) the old primary until the sentinels name the promoted
        # replica; each new connection asks them (redis-py 8.2 reconnected to the old address: the command
        # failed, refused after ~7.5 s or timed out, and only the next one found the new primary).
        assert client.get("k") == b"v"
        assert ha.current_primary() == ha.replica_address

    async def after() -> object:
        async_client = connect_async(ha.target, socket_timeout=SOCKET_TIMEOUT_S)
        try:
            return await asyncio.wait_for(async_client.get("k"), 30)
        finally:
            await async_client.aclose()

    assert run_on_own_loop(after()) == b"v"
