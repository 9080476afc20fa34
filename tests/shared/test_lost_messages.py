"""A queued prediction whose Celery message was lost (``shared.scheduling.lost_messages``) gets it back:
the waiting index follows each prediction whose message was sent (a create, a dispatcher release, a
requeue) until it leaves the queue, and the sweep sends the message again once the prediction's line
moved past it or nothing is left ahead of it, never for one legitimately waiting behind others. The
API's own creates on a real redis-server (kombu's priority lists, the status scripts as Redis runs them)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from api.intake import batch_file
from api.intake.inline_batch import submit_batch
from api.intake.submission import submit
from api.schemas import CreatePrediction
from api.services import Services
from deploy.devstack.servers import RedisServer
from models.registry import find_model
from shared.db import keys
from shared.predictions.leases import Leases
from shared.predictions.status import Status
from shared.scheduling import lost_messages, queues
from tests.support.predictions import depth2img_input
from worker.queue_peek import prediction_id_of

pytestmark = pytest.mark.integration
SD2 = find_model("kiln/sd2-depth2img")
SD2_INPUT = depth2img_input(width=64, height=64, num_inference_steps=1, prompt_strength=1.0, seed=1)
FAMILY = SD2.queue


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as found:
        yield found


@pytest.fixture
def services(server: RedisServer) -> Iterator[Services]:
    from shared.settings import Settings

    # No S3 here: the images stay inline.
    settings = Settings(
        _env_file=None, redis_url=server.url, api_token="a", dispatch_ahead=3, inline_input_max_bytes=1024 * 1024
    )
    services = Services.connect(settings)
    services.redis.flushall()
    yield services
    services.redis.close()


def create(services: Services, tenant: str = "t") -> str:
    prediction, _ = submit(
        services, tenant, SD2, CreatePrediction(version=SD2.ref, input=SD2_INPUT), "http://kiln.test"
    )
    return prediction.id


def waiting(services: Services) -> set[str]:
    return {member.decode() for member in services.redis.zrange(keys.queued_waiting(), 0, -1)}


def messages(services: Services, step: int) -> list[str]:
    """Prediction ids in a Celery list, oldest (next popped) first."""
    raw = services.redis.lrange(queues.priority_lists(FAMILY)[step], 0, -1)
    return [str(prediction_id_of(message)) for message in reversed(raw)]


def lose(services: Services, step: int, prediction_id: str) -> None:
    """What a BRPOP reply lost in a failover does: the message is gone, its prediction still queued."""
    key = queues.priority_lists(FAMILY)[step]
    [raw] = [m for m in services.redis.lrange(key, 0, -1) if prediction_id_of(m) == prediction_id]
    assert services.redis.lrem(key, 1, raw) == 1


def take(services: Services, step: int) -> str:
    """A worker pops the next message of ``step`` and starts its prediction."""
    prediction_id = prediction_id_of(services.redis.rpop(queues.priority_lists(FAMILY)[step]))
    assert prediction_id is not None
    assert Leases(services.redis, lease_s=30).start(prediction_id) == 1
    return prediction_id


def sweep(services: Services, monkeypatch: pytest.MonkeyPatch, grace_s: float = 0.0) -> int:
    monkeypatch.setattr(lost_messages, "GRACE_S", grace_s)
    return services.core.lost_messages.resend()


def test_creates_file_their_messages_and_a_start_or_cancel_takes_them_out(services) -> None:
    single, other = create(services), create(services)
    items = [{"version": SD2.ref, "input": SD2_INPUT | {"seed": i}} for i in range(2)]
    inline, _ = submit_batch(services, "t", items, "http://kiln.test", None)
    inline_ids = {r["id"] for r in inline}
    assert waiting(services) == {single, other} | inline_ids

    assert take(services, queues.PRIORITY_INTERACTIVE) == single
    assert services.store.request_cancel(other) is Status.STARTING
    assert waiting(services) == inline_ids


def test_a_batch_file_item_is_filed_only_once_the_dispatcher_releases_it(services) -> None:
    items = [{"version": SD2.ref, "input": SD2_INPUT | {"seed": i}} for i in range(5)]
    batch = batch_file.create_batch(
        services, "t", batch_file.inline_items(items), 5, "http://kiln.test", None, "x", 100
    )
    ids = list(services.batches.items(batch.id, 0, 10))
    released = messages(services, queues.PRIORITY_DISPATCHED)
    assert len(released) == 3 and waiting(services) == set(released)  # the other two wait in Kiln's lists
    take(services, queues.PRIORITY_DISPATCHED)
    assert services.dispatcher.release(FAMILY) == 1
    now_released = messages(services, queues.PRIORITY_DISPATCHED)
    assert waiting(services) == set(now_released) and len(set(ids) - set(now_released) - {released[0]}) == 1


def test_a_lost_message_is_sent_again_once_a_later_one_of_its_line_started(services, monkeypatch, caplog) -> None:
    lost, started, behind = create(services), create(services), create(services)
    lose(services, queues.PRIORITY_INTERACTIVE, lost)
    assert take(services, queues.PRIORITY_INTERACTIVE) == started

    assert sweep(services, monkeypatch, grace_s=60) == 0  # within its grace: not looked at
    with caplog.at_level(logging.WARNING, logger=lost_messages.__name__):
        assert sweep(services, monkeypatch) == 1
    assert messages(services, queues.PRIORITY_INTERACTIVE) == [behind, lost]
    assert lost in caplog.text
    # ``behind`` waits legitimately (its message is there, nothing after it started): kept, not resent.
    assert waiting(services) == {lost, behind}
    # Resent, ``lost`` waits behind ``behind`` now: the head past its old ticket does not resend it again.
    assert sweep(services, monkeypatch) == 0

    assert take(services, queues.PRIORITY_INTERACTIVE) == behind
    assert take(services, queues.PRIORITY_INTERACTIVE) == lost
    assert waiting(services) == set()


def test_a_message_lost_again_is_sent_again_once_one_queued_after_the_resend_started(services, monkeypatch) -> None:
    lost, _started = create(services), create(services)
    lose(services, queues.PRIORITY_INTERACTIVE, lost)
    take(services, queues.PRIORITY_INTERACTIVE)
    assert sweep(services, monkeypatch) == 1
    later, last = create(services), create(services)
    lose(services, queues.PRIORITY_INTERACTIVE, lost)  # the resent message is lost too
    assert sweep(services, monkeypatch) == 0  # nothing queued after the resend has started yet
    assert take(services, queues.PRIORITY_INTERACTIVE) == later
    assert sweep(services, monkeypatch) == 1
    assert messages(services, queues.PRIORITY_INTERACTIVE) == [last, lost]


def test_a_lost_message_is_sent_again_once_nothing_is_left_ahead_of_it(services, monkeypatch) -> None:
    interactive = create(services)
    items = [{"version": SD2.ref, "input": SD2_INPUT}]
    [lost] = [r["id"] for r in submit_batch(services, "t", items, "http://kiln.test", None)[0]]
    lose(services, queues.PRIORITY_BATCH, lost)

    # Work served before its line still waits: it may legitimately be waiting too.
    assert sweep(services, monkeypatch) == 0
    assert take(services, queues.PRIORITY_INTERACTIVE) == interactive
    assert sweep(services, monkeypatch) == 1
    assert messages(services, queues.PRIORITY_BATCH) == [lost]
    assert take(services, queues.PRIORITY_BATCH) == lost


def test_a_released_batch_item_lost_is_sent_again_once_a_later_item_of_its_tenant_started(
    services, monkeypatch
) -> None:
    items = [{"version": SD2.ref, "input": SD2_INPUT | {"seed": i}} for i in range(3)]
    batch_file.create_batch(services, "t", batch_file.inline_items(items), 3, "http://kiln.test", None, "x", 100)
    first, second, third = messages(services, queues.PRIORITY_DISPATCHED)
    lose(services, queues.PRIORITY_DISPATCHED, first)
    assert sweep(services, monkeypatch) == 0  # the round-robin line's head (per tenant) is not past it yet
    assert take(services, queues.PRIORITY_DISPATCHED) == second
    assert sweep(services, monkeypatch) == 1
    assert messages(services, queues.PRIORITY_DISPATCHED) == [third, first]


def test_a_requeue_is_filed_by_its_status_change_before_its_message_is_sent(services, monkeypatch) -> None:
    prediction_id = create(services)
    services.redis.rpop(queues.priority_lists(FAMILY)[queues.PRIORITY_INTERACTIVE])
    lapsed = Leases(services.redis, lease_s=-1)  # its worker died at once
    assert lapsed.start(prediction_id) == 1
    assert waiting(services) == set()
    # The reaper requeues it and dies before sending the message (maintenance.reap_lapsed_leases).
    assert services.lifecycle.reap(lapsed, prediction_id, max_attempts=3) is not None
    assert waiting(services) == {prediction_id}
    assert sweep(services, monkeypatch) == 1
    assert messages(services, queues.PRIORITY_REQUEUE) == [prediction_id]
    assert lapsed.start(prediction_id) == 2


def test_an_entry_of_a_prediction_no_longer_queued_is_dropped(services, monkeypatch) -> None:
    gone, ended = create(services), create(services)
    services.redis.delete(keys.prediction(gone))
    services.redis.hset(keys.prediction(ended), "status", '"succeeded"')  # not through a status script
    assert sweep(services, monkeypatch) == 0
    assert waiting(services) == set()


def test_one_sweep_takes_its_claims_in_rounds(services, monkeypatch) -> None:
    ids = [create(services) for _ in range(5)]
    services.redis.delete(*(keys.prediction(i) for i in ids))  # gone (not through a status script)
    monkeypatch.setattr(lost_messages, "SWEEP_LIMIT", 2)
    assert sweep(services, monkeypatch) == 0
    assert waiting(services) == set()


def test_a_requeue_forgets_where_the_line_stood_when_its_message_was_sent_again(services, monkeypatch) -> None:
    prediction_id = create(services)
    lose(services, queues.PRIORITY_INTERACTIVE, prediction_id)
    assert sweep(services, monkeypatch) == 1
    assert services.redis.hget(keys.prediction(prediction_id), "queue_resent_behind") == b"1"
    lapsed = Leases(services.redis, lease_s=-1)
    assert lapsed.start(prediction_id) == 1
    assert services.lifecycle.reap(lapsed, prediction_id, max_attempts=3) is not None
    assert services.redis.hget(keys.prediction(prediction_id), "queue_resent_behind") is None
