"""The event loop's Redis client (``shared.db.client.connect_async``): a command waits for a connection when
every one is in use (and fails only after ``ASYNC_POOL_WAIT_S``), a write to a Redis that stopped reading
fails after ``socket_timeout`` with redis-py's error, and ``run_script`` runs a script the server forgot."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, TimeoutError

from deploy.devstack.servers import RedisServer
from shared.db import client as db_client
from shared.db.client import connect_async, run_script
from tests.support import run_on_own_loop


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path, appendonly=False) as found:
        yield found


async def _hold(client: Redis, seconds: float) -> object:
    """Hold one of the client's connections for ``seconds`` (a blocking pop of nothing)."""
    return await client.blpop(["nothing"], timeout=seconds)


def test_a_command_waits_for_a_connection_while_every_one_is_in_use(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_client, "ASYNC_POOL_SIZE", 2)

    async def run() -> list[object]:
        client = connect_async(server.url)
        try:
            held = [asyncio.create_task(_hold(client, 0.3)) for _ in range(2)]
            await asyncio.sleep(0.05)  # both connections taken
            waited = await client.ping()
            return [*(await asyncio.gather(*held)), waited]
        finally:
            await client.aclose()

    assert run_on_own_loop(run()) == [None, None, True]


def test_a_command_fails_when_no_connection_is_released_in_time(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_client, "ASYNC_POOL_SIZE", 1)
    monkeypatch.setattr(db_client, "ASYNC_POOL_WAIT_S", 0.1)

    async def run() -> None:
        client = connect_async(server.url)
        try:
            held = asyncio.create_task(_hold(client, 1))
            await asyncio.sleep(0.05)
            with pytest.raises(ConnectionError, match="No connection available"):
                await client.ping()
            assert await held is None
            assert await client.ping()  # released: usable again
        finally:
            await client.aclose()

    run_on_own_loop(run())


def test_commands_share_the_idle_connections_and_leave_none_in_use(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_client, "ASYNC_POOL_SIZE", 3)

    async def run() -> tuple[list[object], int, int, int]:
        client = connect_async(server.url)
        try:
            answers = await asyncio.gather(*(client.incr("n") for _ in range(300)))
            pool = client.connection_pool
            clients = await client.client_list()
            return answers, len(pool._in_use_connections), len(pool._available_connections), len(clients)
        finally:
            await client.aclose()

    answers, in_use, idle, connected = run_on_own_loop(run())
    assert sorted(answers) == list(range(1, 301))  # type: ignore[type-var]
    assert (in_use, idle) == (0, 3)
    assert connected == 3  # the same three, reused: none left behind or dropped


def test_an_idle_connection_the_server_closed_is_reconnected_before_its_command(server: RedisServer) -> None:
    async def run() -> tuple[object, object]:
        client = connect_async(server.url)
        try:
            first = await client.client_id()
            await client.execute_command("CLIENT", "KILL", "ID", first, "SKIPME", "no")
            await asyncio.sleep(0.05)  # the close reaches the idle connection
            # No retry to hide it: the readiness check must find the close and reconnect.
            client.connection_pool._available_connections[-1].retry = Retry(NoBackoff(), 0)
            return first, await client.client_id()
        finally:
            await client.aclose()

    first, second = run_on_own_loop(run())
    assert first != second


def test_a_connection_given_a_new_token_is_reauthenticated_when_released(server: RedisServer) -> None:
    async def run() -> list[object]:
        client = connect_async(server.url)
        try:
            pool = client.connection_pool
            connection = await pool.get_connection()
            authenticated: list[object] = []

            async def re_auth() -> None:
                authenticated.append(connection._re_auth_token)
                connection._re_auth_token = None

            connection.re_auth = re_auth  # type: ignore[method-assign]
            connection.set_re_auth_token("token")  # type: ignore[arg-type]  # as a streaming provider does
            await pool.release(connection)
            assert connection in pool._available_connections
            return authenticated
        finally:
            await client.aclose()

    assert run_on_own_loop(run()) == ["token"]


def test_a_write_to_a_redis_that_stopped_reading_fails_after_the_socket_timeout(server: RedisServer) -> None:
    async def run() -> None:
        client = connect_async(server.url, socket_timeout=0.5)
        connection = await client.connection_pool.get_connection()
        assert server.pid is not None
        os.kill(server.pid, signal.SIGSTOP)
        try:
            # Far more than the socket buffers hold: the write waits for Redis to read.
            command = connection.pack_command("SET", "large", b"x" * (64 << 20))
            with pytest.raises(TimeoutError, match="Timeout writing to socket"):
                await connection.send_packed_command(command)
            assert not connection.is_connected
        finally:
            os.kill(server.pid, signal.SIGCONT)
        await client.connection_pool.release(connection)
        assert await client.ping()  # a fresh connection
        await client.aclose()

    run_on_own_loop(run())


def test_run_script_runs_a_script_the_server_forgot(server: RedisServer) -> None:
    async def run() -> list[object]:
        client = connect_async(server.url)
        script = client.register_script("return {KEYS[1], ARGV[1]}")
        try:
            first = await run_script(script, ["k"], ["a"])
            await client.script_flush()  # as after a restart or a failover
            return [first, await run_script(script, ["k"], ["b"])]
        finally:
            await client.aclose()

    assert run_on_own_loop(run()) == [[b"k", b"a"], [b"k", b"b"]]


PACKED_ALIKE = [
    ("EVALSHA", "a" * 40, 2, "kiln:prediction:01", b"\x00\xffbytes", "é ✓ 😀", 0, -7, 2**70, 1.5, 1e20, 1e-07, 0.1),
    ("SET", "k", "x" * 10_000),  # past redis-py's 6,000-byte chunking
    ("CONFIG GET", "maxmemory"),  # a name redis-py splits
]
REFUSED_ALIKE = [("SET", "k", True), ("SET", "k", None), ("SET", "k", "\ud800")]


@pytest.mark.parametrize("args", PACKED_ALIKE)
def test_commands_are_packed_to_the_bytes_redis_py_packs(args: tuple[object, ...]) -> None:
    ours, theirs = db_client._Connection(), Redis().connection_pool.connection_class()
    assert type(ours._command_packer).__name__ == "_DirectPacker"
    assert b"".join(ours.pack_command(*args)) == b"".join(theirs.pack_command(*args))
    sync = db_client._direct_packer()
    assert sync is not None and b"".join(sync.pack(*args)) == b"".join(theirs.pack_command(*args))


@pytest.mark.parametrize("args", REFUSED_ALIKE)
def test_what_redis_py_refuses_to_pack_is_refused_alike(args: tuple[object, ...]) -> None:
    theirs = Redis().connection_pool.connection_class()
    with pytest.raises(Exception) as expected:
        theirs.pack_command(*args)
    with pytest.raises(type(expected.value)):
        db_client._Connection().pack_command(*args)


def test_both_clients_pack_directly_and_their_commands_work(server: RedisServer) -> None:
    sync = db_client.connect(server.url)
    sync.set("k", "é", ex=60)
    assert sync.get("k") == "é".encode() and sync.incrbyfloat("f", 1.5) == 1.5
    assert type(sync.connection_pool.get_connection()._command_packer).__name__ == "_DirectPacker"

    async def run() -> object:
        client = connect_async(server.url)
        await client.hset("h", mapping={"a": 1, "b": 2.5, "c": "✓"})
        return await client.hgetall("h")

    assert run_on_own_loop(run()) == {b"a": b"1", b"b": b"2.5", b"c": "✓".encode()}
