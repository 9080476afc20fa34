"""Redis clients that survive a Redis restart, and a failover behind Redis Sentinel: a command on a
connection the restart closed is retried on a fresh one (briefly, with backoff) instead of failing
the request that used it.

Where Redis is: a plain ``redis://`` URL (``KILN_REDIS_URL``), or a ``RedisTarget`` that names the
sentinels too (``KILN_REDIS_SENTINELS``), whose clients ask a sentinel for the primary on every new
connection and so follow it when it moves. The primary's password and database number come from the
URL either way; the sentinels themselves are asked with ``KILN_REDIS_SENTINEL_PASSWORD`` when they
require one (the compose and Kubernetes ha files give them Redis's), else without.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import hiredis
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis._parsers.encoders import Encoder
from redis.asyncio.connection import AbstractConnection
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.commands.core import AsyncScript, Script
from redis.connection import HiredisRespSerializer, PythonRespSerializer, parse_url
from redis.exceptions import ConnectionError, MaxConnectionsError, NoScriptError, TimeoutError, WatchError
from redis.typing import EncodableT, KeyT, ZSetRangeResponse
from redis.utils import HIREDIS_AVAILABLE, is_os_level_timeout

if TYPE_CHECKING:
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    from shared.settings import Settings  # which imports this module

_RETRY_ON = [ConnectionError, TimeoutError]
# A create whose new keys were touched between its check and its write (or whose connection dropped
# while it watched them) is checked again, this many times in all.
_CREATE_TRIES = 5
# Behind Sentinel a command rides out a failover: sentinels take down-after-milliseconds (1 s in
# deploy/devstack) plus an election to promote a replica (~2.3 s measured on loopback), so it is
# retried this many times, waiting 0.1, 0.2, 0.4, 0.8 s, then 1 s between tries (~7.5 s in all).
SENTINEL_RETRIES = 10
# How long a question to a sentinel may take (connecting, then answering) before the next one is asked.
SENTINEL_TIMEOUT_S = 2.0
# No retry of a command starts this long after its first try began: a failover's fast failures are retried
# for ~7.5 s (SENTINEL_RETRIES), a timeout (10 s) once.
RETRY_BUDGET_S = 15.0

_RETRY_STARTED: ContextVar[float | None] = ContextVar("kiln_redis_retry_started", default=None)


def _retryable(_: Exception) -> bool:
    """Whether a failed try (refused, reset, a moved primary, a timeout) is tried again: while the command's
    ``RETRY_BUDGET_S`` lasts. redis-py retries a new connection's connect inside each try of a command, so
    counted tries alone multiplied: a paused Redis held a command 160 s (4 tries, each connecting 4 times,
    each waiting out a 10 s timeout), sentinels with no primary to name 83 s. Now a paused Redis takes two
    tries (20 s), a failover's fast failures as many as before (~7.5 s)."""
    started = _RETRY_STARTED.get()
    return started is None or time.monotonic() - started < RETRY_BUDGET_S


class _Budget:
    """``with _Budget():`` around a call's tries: starts the budget ``_retryable`` reads, unless a call it
    is inside (a command whose try connects) started one, and ends it with that call."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _RETRY_STARTED.set(time.monotonic()) if _RETRY_STARTED.get() is None else None

    def __exit__(self, *_: object) -> None:
        if self._token is not None:
            _RETRY_STARTED.reset(self._token)


class _Retry(redis.retry.Retry):
    """redis-py's retry, exponential backoff up to 1 s, its tries bounded by ``_retryable``; the budget
    starts with the outermost call (a connect retried inside a command's try spends the command's)."""

    def __init__(self, retries: int) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries, is_retryable=_retryable)

    def call_with_retry(self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False) -> Any:
        with _Budget():
            return super().call_with_retry(do, fail, is_retryable, with_failure_count)


class _AsyncRetry(redis.asyncio.retry.Retry):
    """``_Retry`` for an asyncio client (the budget is the task's)."""

    def __init__(self, retries: int) -> None:
        super().__init__(ExponentialBackoff(cap=1.0, base=0.05), retries, is_retryable=_retryable)

    async def call_with_retry(
        self, do: Any, fail: Any, is_retryable: Any = None, with_failure_count: bool = False
    ) -> Any:
        with _Budget():
            return await super().call_with_retry(do, fail, is_retryable, with_failure_count)


@dataclass(frozen=True)
class RedisTarget:
    """Where Kiln's Redis is: ``url`` alone, or the primary named ``master`` that ``sentinels`` know
    (then only the URL's password and database number are used, not its host)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "kiln"
    # The sentinels' own password, if they require one (``KILN_REDIS_SENTINEL_PASSWORD``).
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """Where it is, for messages: without the password."""
        if self.sentinels:
            listed = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"primary {self.master!r} of sentinels {listed}"
        return self.url.rpartition("@")[2]


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``"host:port,host:port"`` (``KILN_REDIS_SENTINELS``) as (host, port) pairs; empty: none."""
    sentinels = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"KILN_REDIS_SENTINELS: {entry!r} is not host:port")
        sentinels.append((host.strip("[]"), int(port)))
    return tuple(sentinels)


def redis_target(settings: Settings) -> RedisTarget:
    """The Redis these settings name (``KILN_REDIS_URL``, ``KILN_REDIS_SENTINELS``, ``KILN_REDIS_SENTINEL_MASTER``)."""
    return RedisTarget(
        settings.redis_url,
        parse_sentinels(settings.redis_sentinels),
        settings.redis_sentinel_master,
        settings.redis_sentinel_password or None,
    )


def _options(socket_timeout: float | None) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry_on_error": _RETRY_ON,
    }


def _primary_options(url: str) -> dict[str, Any]:
    """What a connection to the primary takes from the URL: credentials, database, TLS (not its host)."""
    options: dict[str, Any] = dict(parse_url(url))  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    for unused in ("host", "port", "path", "unix_socket_path"):
        options.pop(unused, None)
    if options.pop("connection_class", None) is redis.SSLConnection:
        options["ssl"] = True
    return options


def sentinel_options(target: RedisTarget) -> dict[str, Any]:
    """How the sentinels themselves are asked: short timeouts, and their password if they have one."""
    options: dict[str, Any] = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S}
    if target.sentinel_password:
        options["password"] = target.sentinel_password
    return options


def _as_target(where: str | RedisTarget) -> RedisTarget:
    return where if isinstance(where, RedisTarget) else RedisTarget(where)


class _Pipeline(Pipeline):
    """redis-py's pipeline, its scripts loaded again before a retry: redis-py loads them (SCRIPT EXISTS,
    then SCRIPT LOAD) once, before the first try, and a retry that reconnected to another server (behind
    Sentinel, the promoted replica) ran EVALSHA of scripts that server never had: NOSCRIPT."""

    _tried = False

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._tried = False
        return super().execute(raise_on_error)

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        self._before_try()
        return super()._execute_transaction(connection, commands, raise_on_error)

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> list[Any]:
        self._before_try()
        replies: list[Any] = super()._execute_pipeline(connection, commands, raise_on_error)  # type: ignore[no-untyped-call]
        return replies

    def _before_try(self) -> None:
        if self._tried and self.scripts:
            self.load_scripts()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        self._tried = True


class _Redis(redis.Redis):
    """A client whose pipelines are ``_Pipeline``s (``transaction`` too makes its pipeline here)."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> _Pipeline:
        return _Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class _SyncSentinelConnection(redis.sentinel.SentinelManagedConnection):
    """A connection to the primary that asks the sentinels where it is whenever it reconnects.

    redis-py 8.2's connection, dropped and then given a command (as a retry does), reconnects to the
    address it had (``connect_check_health``), bypassing the sentinel lookup in ``connect``: every retry
    of a command knocked on the dead (or paused) primary, and only the next command found the promoted
    one (redis/redis-py#3874). ``_SentinelConnection`` is the same for the asyncio client."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is None:
            self.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


class _SyncSentinelSSLConnection(_SyncSentinelConnection, redis.SSLConnection):
    """The same over TLS (a ``rediss://`` URL)."""


def connect(where: str | RedisTarget, socket_timeout: float | None = 10) -> redis.Redis:
    """A client of the Redis at a URL, or of the primary a ``RedisTarget``'s sentinels name."""
    target = _as_target(where)
    packer: dict[str, Any] = {"command_packer": found} if (found := _direct_packer()) is not None else {}
    if not target.sentinels:
        return _Redis.from_url(
            target.url,
            retry=_Retry(3),
            **_options(socket_timeout),
            **packer,
        )
    sentinel = redis.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_options(target))
    primary = _primary_options(target.url)
    client: redis.Redis = sentinel.master_for(
        target.master,
        redis_class=_Redis,
        connection_class=_SyncSentinelSSLConnection if primary.pop("ssl", False) else _SyncSentinelConnection,
        retry=_Retry(SENTINEL_RETRIES),
        **primary,
        **_options(socket_timeout),
        **packer,
    )
    return client


# The event loop's pool: commands are short (nothing waits on a connection: pub/sub waits share one),
# so a burst of requests beyond this many at once queues for a connection instead of failing.
ASYNC_POOL_SIZE = 100
ASYNC_POOL_WAIT_S = 10.0


class _DirectPacker:
    """Commands packed by hiredis with their arguments as given. redis-py's own packer (with hiredis) first
    encodes each argument in Python, ~0.6 µs apiece: 35 µs of a single create's store script (60 arguments),
    for what hiredis does in C, to the same bytes: a str as UTF-8 (strict), an int or a float by its repr.
    What hiredis refuses (a bool, None, a memoryview: redis-py's errors) and a command name holding a space
    (``CONFIG GET``, which redis-py splits) are packed by redis-py's packer, ``fallback``."""

    def __init__(self, fallback: Callable[..., list[bytes]]) -> None:
        self.fallback = fallback

    def pack(self, *args: EncodableT) -> list[bytes]:
        name = args[0]
        if isinstance(name, str) and " " not in name:
            try:
                return [hiredis.pack_command(cast("tuple[str | int | float | bytes]", args))]
            except TypeError:
                pass
        return self.fallback(*args)


def _packs_directly(encoder: Encoder) -> bool:
    """Whether ``_DirectPacker`` packs as redis-py would with this encoder: hiredis installed (redis-py packs
    with it too), and strings sent as strict UTF-8 (redis-py's default, which Kiln keeps)."""
    return HIREDIS_AVAILABLE and encoder.encoding.lower() in {"utf-8", "utf8"} and encoder.encoding_errors == "strict"


def _direct_packer() -> _DirectPacker | None:
    """The synchronous connections' packer (``command_packer``): ``_DirectPacker``, falling back on the
    packer redis-py would build; None (redis-py's own) without hiredis."""
    encoder = Encoder("utf-8", "strict", False)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    if not _packs_directly(encoder):
        return None
    python = PythonRespSerializer(6000, encoder.encode)
    return _DirectPacker(HiredisRespSerializer(python.pack, encoder.encode).pack)  # type: ignore[no-untyped-call]


class _Connection(redis.asyncio.Connection):
    """redis-py's asyncio connection, its writes bounded by ``asyncio.timeout`` rather than ``asyncio.wait_for``:
    on Python 3.11 ``wait_for`` runs every write as a task of its own, which cost a single create (two
    commands) ~7% of its event-loop CPU. The same bound (``socket_timeout``) and the same errors as redis-py's
    ``send_packed_command``. Its commands are packed by ``_DirectPacker``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        packer = self._command_packer
        if packer is not None and _packs_directly(self.encoder):
            self._command_packer = cast("HiredisRespSerializer", _DirectPacker(packer.pack))

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        if not self.socket_timeout:
            await super().send_packed_command(command, check_health)
            return
        if not self.is_connected:
            await self.connect_check_health(check_health=False)
        if check_health:
            await self.check_health()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        if isinstance(command, str):
            command = command.encode()
        try:
            async with asyncio.timeout(self.socket_timeout):
                await self._send_packed_command([command] if isinstance(command, bytes) else command)
        except builtins.TimeoutError as exc:  # the bound, or the OS's ETIMEDOUT
            await self.disconnect(nowait=True)
            if is_os_level_timeout(exc):
                raise ConnectionError(f"Error {exc.errno} while writing to socket. {exc.strerror}.") from exc
            raise TimeoutError("Timeout writing to socket") from None
        except OSError as exc:
            await self.disconnect(nowait=True)
            err_no, message = ("UNKNOWN", exc.args[0]) if len(exc.args) == 1 else exc.args[:2]
            raise ConnectionError(f"Error {err_no} while writing to socket. {message}.") from exc
        except BaseException:
            await self.disconnect(nowait=True)
            raise


class _SSLConnection(_Connection, redis.asyncio.SSLConnection):
    """The same over TLS (a ``rediss://`` URL)."""


class _WaitingPool(redis.asyncio.ConnectionPool):
    """redis-py's connection pool that, every connection in use, waits (up to ``timeout`` seconds) for one
    to be released rather than fail with "Too many connections", as ``BlockingConnectionPool`` does; but a
    command that finds a connection free pays nothing for it (``BlockingConnectionPool`` takes a condition
    and starts a timeout on every command: ~3% of a single create's event-loop CPU).

    A command that finds a connection idle, connected or not, takes it without the pool's lock, and gives it
    back the same way (``_take_idle``, ``_give_back``): the same lists moved, the same readiness check
    (``ensure_connection``), without the five awaited hooks redis-py 8.2 runs around each command for its
    OpenTelemetry connection counts and for re-authentication by a streaming credential provider. Kiln
    enables neither (a connection whose provider sent a new token is given back redis-py's way, which
    re-authenticates it). That was ~10 µs of the ~50 µs a command cost the event loop."""

    def __init__(self, *args: Any, timeout: float = ASYNC_POOL_WAIT_S, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self._released = asyncio.Condition()
        self._waiting = 0

    def _take_idle(self) -> AbstractConnection | None:
        """An idle connection, moved to those in use at once; None when none is idle or the lock is held
        (redis-py's own path is then moving connections: leave it the lists)."""
        if not self._available_connections or self._lock.locked():
            return None
        connection = self._available_connections.pop()
        self._in_use_connections.add(connection)
        return connection

    def _give_back(self, connection: AbstractConnection) -> bool:
        """``connection`` moved back to the idle ones, if it needs nothing more than that: no command is
        waiting for one (they are told by ``release``), it is not marked to reconnect and has no new token
        to authenticate with, and the lock is free."""
        if self._waiting or self._lock.locked() or getattr(connection, "_re_auth_token", None) is not None:
            return False
        if connection.should_reconnect():  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
            return False
        self._in_use_connections.remove(connection)
        self._available_connections.append(connection)
        return True

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        idle = self._take_idle()
        if idle is not None:
            try:
                await self.ensure_connection(idle)
            except BaseException:
                await self.release(idle)
                raise
            return idle
        try:
            return cast("AbstractConnection", await super().get_connection())  # type: ignore[no-untyped-call]
        except MaxConnectionsError:
            pass
        self._waiting += 1  # before trying again: a release from now on notifies
        try:
            async with asyncio.timeout(self.timeout), self._released:
                while True:
                    try:
                        return cast("AbstractConnection", await super().get_connection())  # type: ignore[no-untyped-call]
                    except MaxConnectionsError:
                        await self._released.wait()
        except builtins.TimeoutError:
            raise ConnectionError("No connection available.") from None
        finally:
            self._waiting -= 1

    async def release(self, connection: AbstractConnection) -> None:
        if self._give_back(connection):
            return
        await super().release(connection)
        if self._waiting:
            async with self._released:
                self._released.notify()


class _WaitingSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool, _WaitingPool):
    """redis-py's Sentinel pool (connections to whichever server the sentinels name the primary)
    made to wait for a free connection (``_WaitingPool``), rather than fail."""


class _SentinelConnection(redis.asyncio.sentinel.SentinelManagedConnection, _Connection):
    """A connection to the primary that asks the sentinels where it is whenever it reconnects.

    redis-py 8.2's asyncio connection, dropped and then given a command (as a retry does), reconnects
    to the address it had, bypassing the sentinel lookup in ``connect``: every retry would knock on
    the dead primary (redis/redis-py#3874; ``_SyncSentinelConnection`` for the synchronous client)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await super().send_packed_command(command, check_health)


class _SentinelSSLConnection(_SentinelConnection, redis.asyncio.SSLConnection):
    """The same over TLS (a ``rediss://`` URL)."""


def connect_async(where: str | RedisTarget, socket_timeout: float | None = 10) -> redis.asyncio.Redis:
    """An asyncio client whose pool makes a command wait (up to ``ASYNC_POOL_WAIT_S``) for a free
    connection rather than fail with "Too many connections" when a burst takes them all."""
    target = _as_target(where)
    if not target.sentinels:
        pool = _WaitingPool.from_url(
            target.url,
            max_connections=ASYNC_POOL_SIZE,
            timeout=ASYNC_POOL_WAIT_S,
            retry=_AsyncRetry(3),
            **_options(socket_timeout),
        )
        # The URL chose plain TCP or TLS (a Unix socket keeps redis-py's own connection).
        bounded: dict[type[AbstractConnection], type[AbstractConnection]] = {
            redis.asyncio.Connection: _Connection,
            redis.asyncio.SSLConnection: _SSLConnection,
        }
        pool.connection_class = bounded.get(pool.connection_class, pool.connection_class)
        return redis.asyncio.Redis.from_pool(pool)
    primary = _primary_options(target.url)
    sentinel = redis.asyncio.sentinel.Sentinel(target.sentinels, sentinel_kwargs=sentinel_options(target))
    async_client: redis.asyncio.Redis = sentinel.master_for(
        target.master,
        connection_pool_class=_WaitingSentinelPool,
        connection_class=_SentinelSSLConnection if primary.pop("ssl", False) else _SentinelConnection,
        max_connections=ASYNC_POOL_SIZE,
        timeout=ASYNC_POOL_WAIT_S,
        retry=_AsyncRetry(SENTINEL_RETRIES),
        **primary,
        **_options(socket_timeout),
    )
    return async_client


class _Script(Script):
    """A script run by EVALSHA and, on NOSCRIPT (a Redis restarted or failed over, its script cache empty),
    by EVAL: the script travels in the one command that runs it. redis-py's own fallback sends SCRIPT LOAD
    and then EVALSHA, two commands that a pool may put on two connections: during a failover one can reach
    the new primary and the other a server that was not (a sentinel's stale answer), and the EVALSHA fails
    NOSCRIPT again, a 500. In a pipeline redis-py loads the pipeline's scripts on its own connection first."""

    def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: redis.Redis | RedisCluster | None = None,
    ) -> Any:
        target: Any = self.registered_client if client is None else client
        if isinstance(target, Pipeline):
            return super().__call__(keys, args, target)
        keys, args = list(keys or ()), list(args or ())
        try:
            return target.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return target.eval(self.script, len(keys), *keys, *args)


class _AsyncScript(AsyncScript):
    """``_Script`` for an asyncio client."""

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: redis.asyncio.Redis | AsyncRedisCluster | None = None,
    ) -> Any:
        target: Any = self.registered_client if client is None else client
        if isinstance(target, redis.asyncio.client.Pipeline):
            return await super().__call__(keys, args, target)
        return await _run_async(target, self, list(keys or ()), list(args or ()))


def register_script(client: redis.Redis | redis.asyncio.Redis, text: str) -> Script | AsyncScript:
    """A script registered on ``client`` as redis-py registers it, but whose NOSCRIPT fallback is EVAL (``_Script``)."""
    if isinstance(client, redis.asyncio.Redis):
        return _AsyncScript(client, text)
    return _Script(client, text)


async def _run_async(client: Any, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
    try:
        return await client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.execute_command("EVAL", script.script, len(keys), *keys, *args)


async def run_script(script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
    """``await script(keys=keys, args=args)`` on the client it was registered on, without redis-py's
    wrapper (its imports and type checks, on every call): EVALSHA, and on NOSCRIPT (a Redis restarted or
    failed over, its script cache empty) EVAL, the script in the command that runs it (``_Script``)."""
    return await _run_async(script.registered_client, script, keys, args)


def as_text(reply: bytes | str) -> str:
    """A Redis reply as text. Kiln's clients return bytes (none sets ``decode_responses``); redis-py
    types replies for both settings, as ``bytes | str``."""
    return reply.decode() if isinstance(reply, bytes) else reply


def range_members(reply: ZSetRangeResponse) -> list[str]:
    """The members of a sorted-set range read without scores, as text."""
    # redis-py's reply type also covers ranges read WITHSCORES (member, score pairs); these never are.
    return [as_text(member) for member in cast("list[bytes | str]", reply)]


def newest_first_page(
    client: redis.Redis, index: str, *, before: str | None, after: str | None, limit: int
) -> tuple[list[str], bool]:
    """A page of an index of ids (a sorted set, all scores 0, ids sorting by creation time), newest
    first. ``before``/``after`` are ids bounding the page (exclusive). Returns the page and whether
    more exist beyond it in the direction of travel."""
    if after is not None:
        ids = client.zrangebylex(index, f"({after}", "+", start=0, num=limit + 1)
        more = len(ids) > limit
        return [as_text(i) for i in reversed(ids[:limit])], more
    upper = f"({before}" if before is not None else "+"
    ids = client.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)
    return [as_text(i) for i in ids[:limit]], len(ids) > limit


class AlreadyStored(Exception):
    """A create found keys it was to make already stored, and wrote nothing."""

    def __init__(self, taken: Sequence[str]) -> None:
        super().__init__(f"{len(taken)} key(s) already stored, the first {taken[0]}")
        self.taken = list(taken)


def create_new(client: redis.Redis, new_keys: Sequence[str], fill: Callable[[Pipeline], None]) -> None:
    """Run the commands ``fill`` queues on a pipeline as one transaction, but only if none of
    ``new_keys`` exists: ``AlreadyStored`` (nothing written) otherwise. The keys are watched from the
    check to the write, so a key made in between fails the transaction too, never overwritten."""
    for tries_left in reversed(range(_CREATE_TRIES)):
        with client.pipeline(transaction=True) as pipe:
            if new_keys:
                pipe.watch(*new_keys)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                if pipe.exists(*new_keys):
                    raise AlreadyStored(_stored(client, new_keys))
                pipe.multi()
            fill(pipe)
            try:
                pipe.execute()
                return
            except WatchError:
                if not tries_left:
                    raise


def _stored(client: redis.Redis, candidates: Sequence[str]) -> list[str]:
    with client.pipeline(transaction=False) as pipe:
        for key in candidates:
            pipe.exists(key)
        return [key for key, found in zip(candidates, pipe.execute(), strict=True) if found]
