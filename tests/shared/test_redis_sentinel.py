"""Redis behind Sentinel (``KILN_REDIS_SENTINELS``): every Redis user in Kiln follows the primary when
it moves. Each test runs a real primary, replica and three sentinels (``tests.support.redis_ha``),
SIGKILLs the primary and checks that what Kiln was doing goes on against the promoted replica
(each prints how long after the kill it did, with ``-s``)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from api.streams.events import EventHub
from shared.cli import main as kiln
from shared.db import keys
from shared.db.client import RedisTarget, connect, connect_async, parse_sentinels, redis_target, sentinel_options
from shared.runtime.celery_config import broker_options, broker_url, create_celery
from shared.settings import Settings
from tests.support import python, run_on_own_loop, start_process, stop_process, wait_until
from tests.support.redis_ha import RedisHA, redis_ha
from tests.support.sentinel_worker_app import DONE_KEY, QUEUE, RECORD_TASK


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    with redis_ha(tmp_path / "redis-ha") as running:
        yield running


def _report_gap(what: str, started: float) -> None:
    print(f"{what}: {time.monotonic() - started:.2f} s after the primary was killed", file=sys.stderr)


def test_settings_name_the_sentinels_and_a_plain_url_stays_a_plain_url() -> None:
    settings = Settings(
        _env_file=None, redis_url="redis://:pw@ignored:1/3", redis_sentinels="10.0.0.1:26379, 10.0.0.2:26380"
    )
    target = redis_target(settings)
    assert target == RedisTarget("redis://:pw@ignored:1/3", (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "kiln")
    assert broker_url(target) == "sentinel://:pw@10.0.0.1:26379/3;sentinel://:pw@10.0.0.2:26380/3"
    plain = redis_target(Settings(_env_file=None, redis_url="redis://127.0.0.1:6390/0"))
    assert plain.sentinels == () and broker_url(plain) == "redis://127.0.0.1:6390/0"
    with pytest.raises(ValueError, match="KILN_REDIS_SENTINELS"):
        parse_sentinels("10.0.0.1")


def test_sentinels_with_a_password_are_given_it_by_the_clients_and_the_broker() -> None:
    settings = Settings(
        _env_file=None, redis_url="redis://:pw@ignored:1/0", redis_sentinels="s:26379", redis_sentinel_password="spw"
    )
    target = redis_target(settings)
    assert sentinel_options(target)["password"] == "spw"
    assert broker_options(settings, target)["sentinel_kwargs"] == {"password": "spw"}
    without = redis_target(Settings(_env_file=None, redis_sentinels="s:26379"))
    assert "password" not in sentinel_options(without) and "sentinel_kwargs" not in broker_options(settings, without)


@pytest.mark.integration
def test_a_write_on_the_sync_client_rides_out_the_primary_being_killed(ha: RedisHA) -> None:
    with connect(ha.target) as client:
        client.set("before", "1")
        # Replication is asynchronous: only a write the replica confirmed survives the primary's death.
        assert client.wait(1, 5000) == 1
        ha.kill_primary()
        started = time.monotonic()
        client.set("after", "2")  # one call: its retries span the failover
        _report_gap("sync client write", started)
        assert ha.current_primary() == ha.replica_address
        assert client.mget("before", "after") == [b"1", b"2"]


@pytest.mark.integration
def test_a_write_on_the_async_client_rides_out_the_primary_being_killed(ha: RedisHA) -> None:
    async def run() -> list[bytes | None]:
        client = connect_async(ha.target)
        try:
            await client.set("before", "1")
            assert await client.wait(1, 5000) == 1  # only a replicated write survives the primary
            ha.kill_primary()
            started = time.monotonic()
            await client.set("after", "2")
            _report_gap("async client write", started)
            return await client.mget("before", "after")
        finally:
            await client.aclose()

    assert run_on_own_loop(run()) == [b"1", b"2"]
    assert ha.current_primary() == ha.replica_address


@pytest.mark.integration
def test_the_kiln_command_finds_the_promoted_primary(
    ha: RedisHA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout's
    for name, value in ha.environment().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KILN_DATA_DIR", str(tmp_path / "data"))
    ha.kill_primary()
    ha.wait_for_failover()
    assert kiln(["tokens", "create", "after-failover"]) == 0
    assert kiln(["tokens", "list"]) == 0
    assert "after-failover" in capsys.readouterr().out
    with redis.Redis(port=ha.replica.port, password=ha.password) as promoted:
        assert promoted.keys(f"{keys.PREFIX}:*")  # written on the promoted replica


@pytest.mark.integration
def test_a_task_sent_as_the_primary_dies_reaches_a_real_worker(ha: RedisHA, tmp_path: Path) -> None:
    env = {**os.environ, **ha.environment(), "KILN_DATA_DIR": str(tmp_path / "data")}
    argv = [python(), "-m", "celery", "-A", "tests.support.sentinel_worker_app:app", "worker"]
    argv += ["--pool", "solo", "-Q", QUEUE, "--without-mingle", "--without-gossip", "--loglevel", "INFO"]
    worker = start_process(argv, env, tmp_path / "worker.log")
    celery = create_celery(Settings(_env_file=None, **ha.settings_overrides()))
    try:
        with connect(ha.target) as client:
            celery.send_task(RECORD_TASK, args=["before"], queue=QUEUE)
            wait_until(lambda: client.llen(DONE_KEY) == 1, 60, what="the worker to take a task")
            ha.kill_primary()
            started = time.monotonic()
            celery.send_task(RECORD_TASK, args=["after"], queue=QUEUE)  # rides out the failover
            _report_gap("task sent", started)
            wait_until(lambda: client.llen(DONE_KEY) == 2, 30, what="the worker to take the task sent in the failover")
            _report_gap("task run by the worker", started)
            assert client.lrange(DONE_KEY, 0, -1) == [b"before", b"after"]
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-4000:]
    finally:
        celery.close()
        stop_process(worker)


@pytest.mark.integration
def test_an_event_published_after_a_failover_reaches_its_waiter(ha: RedisHA) -> None:
    channel = keys.prediction_events("p-failover")

    async def run() -> float:
        hub = EventHub.connect(ha.target)
        await hub.start()
        try:
            async with hub.subscribe("p-failover") as subscription:
                ha.kill_primary()
                started = time.monotonic()
                with connect(ha.target) as client:
                    # The listener has subscribed again on the promoted replica (its home channel and ours).
                    await asyncio.to_thread(
                        wait_until, lambda: client.pubsub_numsub(channel)[0][1] == 1, 30, what="a resubscription"
                    )
                    _report_gap("event listener subscribed again", started)
                    await subscription.wait(0)  # the reconnect's wake-up, not the event's
                    assert client.publish(channel, "succeeded") == 1
                woken = time.monotonic()
                await subscription.wait(timeout_s=60)
                return time.monotonic() - woken
        finally:
            await hub.close()

    assert run_on_own_loop(run()) < 60, "the waiter was not woken by the event"
