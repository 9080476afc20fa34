"""Kiln's Lua scripts (``shared.db.lua.register``) run on a server that has forgotten them (restarted, failed
over: its script cache empty) by EVAL, the script in the one command that runs it. redis-py's own fallback,
SCRIPT LOAD then EVALSHA, is two commands a pool may send on two connections; during a failover a sentinel
pool holds connections to two servers (a sentinel's stale answer), and the EVALSHA failed NOSCRIPT again:
a create answered 500 in ``test_redis_failover``."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from deploy.devstack.servers import RedisServer
from shared.db.client import connect, connect_async, register_script, run_script
from tests.support import run_on_own_loop

ECHO = "return {KEYS[1], ARGV[1]}"


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    with (
        RedisServer(tmp_path / "a", appendonly=False) as first,
        RedisServer(tmp_path / "b", appendonly=False) as second,
    ):
        yield first, second


def calls(client: redis.Redis) -> dict[str, int]:
    """The script commands the server has run, by name."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("eval", "evalsha", "script|load")}


class TwoServersPool(redis.ConnectionPool):
    """Hands out connections to two servers in turn, as a sentinel pool does while the sentinels disagree on
    the primary."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__()
        self._pools = itertools.cycle([redis.ConnectionPool.from_url(first), redis.ConnectionPool.from_url(second)])
        self._lent: dict[int, redis.ConnectionPool] = {}

    def get_connection(self, *args: object, **kwargs: object) -> redis.connection.Connection:
        pool = next(self._pools)
        connection = pool.get_connection()
        self._lent[id(connection)] = pool
        return connection

    def release(self, connection: redis.connection.Connection) -> None:  # type: ignore[override]
        self._lent.pop(id(connection)).release(connection)


def test_a_forgotten_script_is_run_by_eval_never_loaded_then_run(servers: tuple[RedisServer, RedisServer]) -> None:
    client = connect(servers[0].url)
    script = register_script(client, ECHO)
    assert script(keys=["k"], args=["a"]) == [b"k", b"a"]
    assert script(keys=["k"], args=["b"]) == [b"k", b"b"]
    client.script_flush()
    assert script(keys=["k"], args=["c"]) == [b"k", b"c"]
    # Two forgotten (the first call and after the flush), one remembered by the EVAL before it.
    assert calls(client) == {"eval": 2, "evalsha": 3, "script|load": 0}


def test_a_script_runs_on_connections_that_reach_two_servers(servers: tuple[RedisServer, RedisServer]) -> None:
    client = redis.Redis(connection_pool=TwoServersPool(servers[0].url, servers[1].url))
    with pytest.raises(NoScriptError):  # redis-py's fallback: SCRIPT LOAD on one server, EVALSHA on the other
        client.register_script(ECHO)(keys=["k"], args=["a"])
    script = register_script(redis.Redis(connection_pool=TwoServersPool(servers[0].url, servers[1].url)), ECHO)
    assert [script(keys=["k"], args=[str(n)]) for n in range(4)] == [[b"k", str(n).encode()] for n in range(4)]


def test_a_pipeline_still_loads_its_scripts_on_its_own_connection(servers: tuple[RedisServer, RedisServer]) -> None:
    client = connect(servers[0].url)
    script = register_script(client, ECHO)
    with client.pipeline() as pipe:
        script(keys=["k"], args=["a"], client=pipe)
        assert pipe.execute() == [[b"k", b"a"]]
    assert calls(client)["script|load"] == 1


def test_an_async_script_the_server_forgot_is_run_by_eval(servers: tuple[RedisServer, RedisServer]) -> None:
    async def run() -> tuple[list[object], dict[str, int]]:
        client = connect_async(servers[0].url)
        script = register_script(client, ECHO)
        try:
            replies = [await run_script(script, ["k"], ["a"]), await script(keys=["k"], args=["b"])]
            await client.script_flush()
            replies += [await script(keys=["k"], args=["c"]), await run_script(script, ["k"], ["d"])]
            return replies, calls(connect(servers[0].url))
        finally:
            await client.aclose()

    replies, counted = run_on_own_loop(run())
    assert replies == [[b"k", letter] for letter in (b"a", b"b", b"c", b"d")]
    assert counted == {"eval": 2, "evalsha": 4, "script|load": 0}


class MovingConnection(redis.Connection):
    """Connects to its first server, and after a drop to another: as a sentinel-managed connection
    reconnects to the replica promoted meanwhile."""

    def __init__(self, then_port: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.then_port = then_port
        self.connects = 0

    def _connect(self) -> object:
        if self.connects:
            self.port = self.then_port
        self.connects += 1
        return super()._connect()


@pytest.mark.parametrize("transaction", [False, True], ids=["pipeline", "transaction"])
def test_a_pipeline_retried_on_another_server_loads_its_scripts_there(
    servers: tuple[RedisServer, RedisServer], transaction: bool
) -> None:
    first, second = servers
    client = connect(first.url)
    # Kiln's connection settings (its retry among them), on connections that move.
    moving = client.connection_pool.connection_kwargs | {"then_port": second.port}
    client.connection_pool = redis.ConnectionPool(connection_class=MovingConnection, **moving)
    script = register_script(client, ECHO)
    with client.pipeline(transaction=transaction) as pipe:
        # The first server drops the connection after the scripts were loaded there (the first try); the
        # retry runs on the second, which kills nothing (its own address is another).
        pipe.execute_command("CLIENT", "KILL", "LADDR", f"127.0.0.1:{first.port}", "SKIPME", "no")
        script(keys=["k"], args=["a"], client=pipe)
        replies = pipe.execute()
    assert replies == [0, [b"k", b"a"]]  # redis-py's pipeline ran EVALSHA there: NOSCRIPT
    assert calls(connect(second.url))["script|load"] == 1
