"""The webhook worker on the Sentinel broker outlives a failover (issue #27): Redis's primary is
SIGKILLed while the worker holds an unacknowledged delivery and waits on a ``BRPOP`` for the next one,
the case in which kombu's Redis transport made it exit with "Unrecoverable error: AttributeError:
'NoneType' object has no attribute 'hostname'" (``shared.runtime.redis_broker``). It must go on and
deliver the ``completed`` webhook of a prediction that ended after the failover.

Just Redis (a primary, a replica, three sentinels), the webhook worker as production runs it (a pool
of 4 threads) and a receiver; this test ends the predictions itself, as a GPU worker would. The second
test is the same close in kombu alone, on a plain ``redis://`` broker (as a Redis restart cuts it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
from redis import Redis

from deploy.devstack.servers import RedisServer, free_port
from shared.db.client import connect
from shared.predictions.leases import Leases
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.runtime.celery_config import create_celery
from shared.runtime.prediction_core import PredictionCore, build_prediction_core
from shared.settings import Settings
from shared.webhooks.secrets import WebhookSecrets
from tests.support import start_process, stop_process, wait_until
from tests.support.receiver import Received, WebhookReceiver
from tests.support.redis_ha import RedisHA, redis_ha
from tests.support.stack import READY, WEBHOOK_WORKER_ARGV

pytestmark = pytest.mark.integration
TENANT = "tenant-failover"


@pytest.fixture
def ha(tmp_path: Path) -> Iterator[RedisHA]:
    with redis_ha(tmp_path / "redis-ha") as running:
        yield running


@pytest.fixture
def webhook_worker(ha: RedisHA, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """The webhook worker on the sentinels, started and ready: its log and its process."""
    log = tmp_path / "webhooks.log"
    env = os.environ | ha.environment()
    env |= {
        "KILN_DATA_DIR": str(tmp_path / "data"),
        "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
        # Held at the receiver across the failover: not given up meanwhile.
        "KILN_WEBHOOK_TIMEOUT_S": "30",  # the most allowed
        # No S3 is needed; nothing listens here.
        "KILN_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "KILN_WORKER_METRICS_PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }
    worker = start_process(WEBHOOK_WORKER_ARGV, env, log)
    try:
        wait_until(lambda: worker.poll() is not None or READY in log.read_bytes(), 60, what="the webhook worker")
        assert worker.poll() is None, log.read_text()[-4000:]
        yield log, worker
    finally:
        stop_process(worker)


def end_with_webhook(core: PredictionCore, redis: Redis, url: str) -> str:
    """A prediction with a ``completed`` webhook to ``url``, run and succeeded as a GPU worker does it."""
    prediction = Prediction(
        tenant=TENANT,
        model="kiln/sd2-depth2img",
        version="kiln/sd2-depth2img",
        queue="gpu.sd2-depth",
        input={"prompt": "failover"},
        webhook=url,
        webhook_events_filter=["completed"],
    )
    core.store.create(prediction)
    attempt = Leases(redis, 30).start(prediction.id)
    assert attempt is not None
    assert core.lifecycle.finish(prediction, Status.SUCCEEDED, attempt=attempt, output=[])
    return prediction.id


def test_the_webhook_worker_delivers_after_the_primary_is_killed_under_it(ha: RedisHA, webhook_worker) -> None:
    log, worker = webhook_worker
    settings = Settings(_env_file=None, **ha.settings_overrides())
    redis = connect(ha.target)
    celery = create_celery(settings)
    core = build_prediction_core(settings, redis, celery)
    secret = WebhookSecrets(redis, settings.webhook_secret_overlap_s).get(TENANT).current
    held, release = threading.Event(), threading.Event()

    def hold_the_first(delivery: Received) -> None:
        """The delivery to /before waits at the receiver until the failover is over: unacknowledged."""
        if delivery.path == "/before":
            held.set()
            release.wait(60)

    try:
        with WebhookReceiver(secret) as receiver:
            receiver.on_delivery = hold_the_first
            before = end_with_webhook(core, redis, receiver.url("/before"))
            wait_until(held.is_set, 30, what="the first delivery at the receiver")
            ha.kill_primary()
            ha.wait_for_failover()
            release.set()
            after = end_with_webhook(core, redis, receiver.url("/after"))

            def delivered() -> bool:
                return worker.poll() is not None or {before, after} <= set(receiver.terminal_deliveries()[0])

            wait_until(delivered, 60, what="both completed webhooks")
            assert worker.poll() is None, "the webhook worker exited:\n" + log.read_text()[-6000:]
            assert {(r.body["id"], r.status) for r in receiver.at("/after")} == {(after, Status.SUCCEEDED.value)}
    finally:
        release.set()
        celery.close()
        redis.close()
    assert b"Unrecoverable error" not in log.read_bytes()


def test_a_channel_cut_off_while_it_holds_a_message_closes_with_its_connection(tmp_path: Path) -> None:
    """kombu alone, closing a connection as Celery's consumer does after a connection error
    (``collect()``, its errors ignored, then ``close()``): the channel holds an unacknowledged message,
    and it and a second channel each wait on a ``BRPOP`` when the server dies."""
    with RedisServer(tmp_path / "redis", appendonly=False) as server:
        celery = create_celery(Settings(_env_file=None, redis_url=server.url))
        connection = celery.connection_for_read()
        tasks, other = kombu.Queue("failover-tasks"), kombu.Queue("failover-other")
        channel = connection.default_channel
        kombu.Producer(channel).publish({"n": 1}, routing_key=tasks.name, declare=[tasks])
        held: list[kombu.Message] = []
        kombu.Consumer(channel, [tasks], callbacks=[lambda body, message: held.append(message)]).consume()
        connection.drain_events(timeout=10)
        second = connection.channel()
        kombu.Consumer(second, [other], callbacks=[lambda body, message: None]).consume()
        connection.transport.cycle.on_poll_start()  # each channel sends its BRPOP, as the event loop does
        assert len(held) == 1
        server.kill()
        with contextlib.suppress(Exception):
            connection.collect()
        connection.close()  # kombu 5.7.0: AttributeError: 'NoneType' object has no attribute 'hostname'
        assert channel.closed and second.closed
        celery.close()
