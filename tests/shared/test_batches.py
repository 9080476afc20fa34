"""Batch counts kept by the items' status scripts, the batch's one webhook, and the dispatcher's
round-robin release, on a private redis-server (the Lua as Redis runs it)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.batches.records import Batch, BatchStore, batch_delivery_id
from shared.batches.settler import BatchSettler
from shared.db import keys
from shared.predictions.leases import Leases
from shared.predictions.record import Prediction
from shared.predictions.retention import Janitor
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.runtime.celery_config import create_celery
from shared.scheduling import queues
from shared.scheduling.dispatcher import Dispatcher, dispatched_list
from shared.scheduling.task_messages import PredictMessages
from shared.settings import Settings
from shared.webhooks.outbox import WebhookOutbox
from worker.queue_peek import prediction_id_of

FAMILY = queues.SD2_DEPTH


class SentTasks:
    """Stands in for Celery where only ``send_task`` is used: records what was sent."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def send_task(self, name: str, args: list[str], queue: str) -> None:
        self.sent.append(args)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as found:
        yield found


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url) as found:
        found.flushall()
        yield found


def new_batch(
    client: redis.Redis, count: int, tenant: str = "t1", webhook: str | None = "https://example.com/h"
) -> tuple[Batch, list[Prediction]]:
    """A batch of ``count`` queued items (still validating): records and the batch's item list and counts,
    but not the dispatcher's lists, which the dispatcher tests fill themselves (``queue_items``). The
    intake stores all of these in one script (``PredictionStore.create_batch_chunk``)."""
    batches, store = BatchStore(client), PredictionStore(client)
    batch = batches.create(tenant, "http://api", webhook, "inline", count)
    items = [
        Prediction(
            tenant=tenant, model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={"seed": i}, batch_id=batch.id
        )
        for i in range(count)
    ]
    store.create_many(items)
    with client.pipeline(transaction=True) as pipe:
        batches.add_items_to_pipeline(pipe, batch.id, [p.id for p in items], len(items), 0)
        pipe.execute()
    return batch, items


def test_counts_follow_every_move_and_the_batch_ends_once_despite_retries(client):
    batch, (first, second, third) = new_batch(client, 3)
    batches, store = BatchStore(client), PredictionStore(client)
    batches.seal(batch.id)
    leases = Leases(client, lease_s=0.01)
    attempt = leases.start(first.id)
    assert batches.get(batch.id).counts == {"starting": 2, "processing": 1}
    time.sleep(0.05)
    assert leases.reap(first.id, max_attempts=3) is Status.STARTING  # its worker died: requeued
    assert batches.get(batch.id).counts == {"starting": 3, "processing": 0}
    attempt = leases.start(first.id)
    assert store.transition(first.id, Status.SUCCEEDED, if_attempt=attempt)
    assert not store.transition(first.id, Status.SUCCEEDED)  # a duplicate delivery's finish
    store.request_cancel(second.id)
    assert batches.get(batch.id).status == "queued"
    assert store.transition(third.id, Status.FAILED)
    assert not store.transition(third.id, Status.CANCELED)

    ended = batches.get(batch.id)
    assert ended.status == "completed" and ended.completed_at is not None
    assert {k: v for k, v in ended.counts.items() if v} == {"succeeded": 1, "canceled": 1, "failed": 1}
    assert client.zrange(keys.batches_finished(), 0, -1) == [batch.id.encode()]


def test_the_batch_webhook_is_recorded_once_however_many_settlers_run(client):
    batch, items = new_batch(client, 2)
    store = PredictionStore(client)
    BatchStore(client).seal(batch.id)
    for item in items:
        store.request_cancel(item.id)
    outbox = WebhookOutbox(client, Settings(_env_file=None))
    celery = SentTasks()
    settlers = [BatchSettler(BatchStore(client), outbox, celery, 3600) for _ in range(2)]  # type: ignore[arg-type]
    assert sum(settler.settle() for settler in settlers) == 1
    client.zadd(keys.batches_finished(), {batch.id: 0})  # as if a settler died before forgetting it
    settlers[1].settle()
    assert celery.sent == [[batch_delivery_id(batch.id)]]
    delivery = outbox.get(batch_delivery_id(batch.id))
    assert delivery is not None and delivery.url == "https://example.com/h" and delivery.tenant == "t1"
    assert '"status": "completed"' in delivery.body and '"succeeded": 0' in delivery.body


def test_a_settled_batch_s_shared_inputs_are_due_with_its_items_retention(client):
    batch, items = new_batch(client, 1)
    BatchStore(client).seal(batch.id)
    PredictionStore(client).request_cancel(items[0].id)
    settler = BatchSettler(BatchStore(client), WebhookOutbox(client, Settings(_env_file=None)), SentTasks(), 40)  # type: ignore[arg-type]
    assert settler.settle() == 1
    ended = BatchStore(client).get(batch.id).completed_at
    assert client.zscore(keys.retention(), f"batch:{batch.id}") == pytest.approx(ended + 40)


def test_an_ended_batch_expires_with_its_webhook_message_its_record_retention_after_it_ended(client):
    """Its record, item list, shared fields, its tenant's list entry and its (failed) webhook message all go
    ``record_retention_s`` after it ended, as its items' records do: it outlived them by up to 7 days."""
    batch, items = new_batch(client, 1)
    batches = BatchStore(client, record_retention_s=600)
    batches.seal(batch.id)
    PredictionStore(client).request_cancel(items[0].id)
    client.hset(keys.batch_shared_fields(batch.id, 0), "version", "v")
    client.hset(keys.batch_record(batch.id), keys.BATCH_SHARED_GROUPS, 1)
    outbox = WebhookOutbox(client, Settings(_env_file=None))
    assert BatchSettler(batches, outbox, SentTasks(), 40).settle() == 1  # type: ignore[arg-type]
    message = batch_delivery_id(batch.id)
    client.zadd(keys.tenant_failed_webhooks("t1"), {message: 1})  # its webhook failed
    ended = batches.get(batch.id).completed_at
    assert client.zscore(keys.retention(), f"batch_record:{batch.id}") == pytest.approx(ended + 600)

    client.zadd(keys.retention(), {f"batch_record:{batch.id}": 0})  # due
    Janitor(client, storage=None).run_once()  # type: ignore[arg-type]
    assert batches.get(batch.id) is None and batches.list_for_tenant("t1")[0] == []
    gone = [keys.batch_record(batch.id), keys.batch_items(batch.id), keys.batch_shared_fields(batch.id, 0)]
    gone += [keys.webhook_delivery(message), keys.webhook_delivery_attempts(message)]
    assert client.exists(*gone) == 0
    assert client.zscore(keys.tenant_batches("t1"), batch.id) is None
    assert client.zscore(keys.tenant_failed_webhooks("t1"), message) is None
    assert client.zscore(keys.webhook_due(), message) is None


def test_a_batch_ends_only_once_sealed_and_a_canceled_one_ends_canceled(client):
    batch, (item,) = new_batch(client, 1)
    batches, store = BatchStore(client), PredictionStore(client)
    batches.flag_cancel(batch.id)
    store.request_cancel(item.id)
    assert batches.get(batch.id).status == "validating"  # items may still be coming
    assert batches.seal(batch.id)
    assert batches.get(batch.id).status == "canceled"
    empty = batches.create("t1", "http://api", None, "inline", 1)
    assert batches.seal(empty.id) and batches.get(empty.id).status == "completed"  # every item refused


def test_a_cancel_racing_a_batchs_expiry_brings_nothing_back(client):
    """The record expired after a cancel read it: the cancel's write makes no hash of its own (with no TTL,
    and no ``id``, one broke every read and list of the tenant's batches)."""
    batches = BatchStore(client)
    batch = batches.create("t1", "http://api", None, "inline", 1)
    client.delete(keys.batch_record(batch.id))  # expired
    assert batches.flag_cancel(batch.id) is False
    batches.keep_inputs_for(batch.id, 60)
    batches.cut_short(batch.id)
    assert not client.exists(keys.batch_record(batch.id))
    # A hash of a few fields alone, as such a write left one before: read as no batch, and listed as none.
    client.hset(keys.batch_record(batch.id), "cancel_requested", 1)
    assert batches.get(batch.id) is None
    listed, _ = batches.list_for_tenant("t1")
    assert listed == [] and client.zscore(keys.tenant_batches("t1"), batch.id) is None


@pytest.fixture
def dispatcher(server: RedisServer, client: redis.Redis) -> Dispatcher:
    messages = PredictMessages(create_celery(Settings(_env_file=None, redis_url=server.url)))
    return Dispatcher(client, messages, ahead=1)


def queue_items(client: redis.Redis, dispatcher: Dispatcher, tenant: str, count: int) -> list[str]:
    _, items = new_batch(client, count, tenant)
    with client.pipeline(transaction=True) as pipe:
        dispatcher.add_to_pipeline(pipe, FAMILY, tenant, [p.id for p in items])
        pipe.execute()
    return [p.id for p in items]


def take(client: redis.Redis) -> str | None:
    """What a worker does: pop the next dispatched message."""
    raw = client.rpop(dispatched_list(FAMILY))
    return prediction_id_of(raw) if raw else None


def test_release_takes_tenants_in_turn_keeping_ahead_messages_in_celery(client, dispatcher):
    heavy = queue_items(client, dispatcher, "heavy", 6)
    order = []
    while dispatcher.release(FAMILY) or client.llen(dispatched_list(FAMILY)):
        assert client.llen(dispatched_list(FAMILY)) == 1  # never more than ``ahead`` waiting
        order.append(take(client))
        if len(order) == 2:  # a newcomer, while the heavy tenant has a backlog: served next
            light = queue_items(client, dispatcher, "light", 2)
    assert order == [heavy[0], heavy[1], light[0], heavy[2], light[1], *heavy[3:]]
    assert not client.exists(keys.dispatch_tenants(FAMILY), keys.dispatch_claimed())


def test_items_no_longer_queued_are_skipped_and_lost_claims_are_sent_again(client, dispatcher):
    first, second = queue_items(client, dispatcher, "t1", 2)
    PredictionStore(client).request_cancel(first)
    assert dispatcher.release(FAMILY) == 1 and take(client) == second
    # A dispatcher that claimed an item and died before writing its message.
    client.zadd(keys.dispatch_claimed(), {f"{FAMILY} {first}": time.time() - 120})
    assert dispatcher.resend_stale_claims() == 1
    assert take(client) == first and not client.exists(keys.dispatch_claimed())
