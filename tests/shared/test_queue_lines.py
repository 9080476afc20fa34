"""Queue lines (``shared.scheduling.queue_lines``): the tickets the status scripts count, and the
``queue_position`` read from them, for first-come lines, lines served after others, the dispatcher's
round-robin lanes and the low lane's gate; on a private redis-server (the Lua as Redis runs it)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.client import Pipeline

from deploy.devstack.servers import RedisServer
from shared.db import keys
from shared.db.client import AlreadyStored
from shared.predictions.leases import Leases
from shared.predictions.record import Prediction
from shared.predictions.status import Status
from shared.predictions.store import ClaimLost, PredictionStore
from shared.runtime.celery_config import create_celery
from shared.scheduling import queues
from shared.scheduling.dispatcher import Dispatcher
from shared.scheduling.queue_counters import QueueFull
from shared.scheduling.task_messages import PredictMessages
from shared.settings import Settings
from worker.queue_peek import prediction_id_of

FAMILY = queues.SD2_DEPTH
INTERACTIVE, DISPATCHED, BATCH, HEAVY, LOW = (
    queues.PRIORITY_INTERACTIVE,
    queues.PRIORITY_DISPATCHED,
    queues.PRIORITY_BATCH,
    queues.PRIORITY_BATCH_HEAVY,
    queues.PRIORITY_LOW,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False) as found:
        yield found


@pytest.fixture
def store(server: RedisServer) -> Iterator[PredictionStore]:
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
        yield PredictionStore(client)


@pytest.fixture
def dispatcher(server: RedisServer, store: PredictionStore) -> Dispatcher:
    messages = PredictMessages(create_celery(Settings(_env_file=None, redis_url=server.url)))
    return Dispatcher(store.redis, messages, ahead=1)


def queue(
    store: PredictionStore, line: int, count: int, tenant: str = "t1", messages: PredictMessages | None = None
) -> list[str]:
    """``count`` predictions of one tenant stored and given tickets of ``line``, as a create does (with
    their Celery messages, given ``messages``)."""
    created = [
        Prediction(tenant=tenant, model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={}) for _ in range(count)
    ]
    ids = [p.id for p in created]

    def enqueue(pipe: Pipeline, _: int) -> None:
        for prediction_id in ids if messages else ():
            pipe.lpush(*messages.render(prediction_id, FAMILY, line))
        store.lines.enter_in_pipeline(pipe, FAMILY, line, tenant, ids)

    store.create_many(created, enqueue=enqueue)
    return ids


def dispatch(store: PredictionStore, dispatcher: Dispatcher, count: int, tenant: str, *, low: bool) -> list[str]:
    """``count`` items of one tenant in a dispatcher lane, as the batch intake lists them."""
    created = [
        Prediction(tenant=tenant, model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={}) for _ in range(count)
    ]
    ids = [p.id for p in created]
    store.create_many(created, enqueue=lambda pipe, _: dispatcher.add_to_pipeline(pipe, FAMILY, tenant, ids, low=low))
    return ids


def positions(store: PredictionStore, ids: list[str]) -> list[int | None]:
    found = {p.id: p for p in store.get_many(ids)}
    return store.lines.positions([found[i] for i in ids])


def start(store: PredictionStore, prediction_id: str) -> None:
    assert Leases(store.redis, lease_s=30).start(prediction_id) == 1


def take(store: PredictionStore, step: int) -> str:
    """What a worker does: pop the next message of a Celery step, and start its prediction."""
    raw = store.redis.rpop(queues.priority_lists(FAMILY)[step])
    assert raw is not None, f"nothing waits in step {step}"
    prediction_id = prediction_id_of(raw)
    assert prediction_id is not None
    start(store, prediction_id)
    return prediction_id


def test_a_first_come_line_counts_down_as_the_ones_ahead_start_or_leave(store):
    ids = queue(store, INTERACTIVE, 5)
    assert positions(store, ids) == [0, 1, 2, 3, 4]
    start(store, ids[0])
    assert positions(store, ids) == [None, 0, 1, 2, 3]
    store.request_cancel(ids[4])  # behind the others: nobody moves
    assert positions(store, ids) == [None, 0, 1, 2, None]
    store.request_cancel(ids[1])  # ahead of two: they move up
    assert store.transition(ids[2], Status.ABORTED)  # a Cancel-After deadline, in the queue
    assert positions(store, ids) == [None, None, None, 0, None]
    start(store, ids[3])
    assert positions(store, ids) == [None] * 5


def test_a_drained_line_leaves_no_key_behind_and_counts_again_from_one(store):
    first = queue(store, INTERACTIVE, 3)
    store.request_cancel(first[1])
    assert store.redis.exists(keys.queue_line_skipped(FAMILY, str(INTERACTIVE)))
    for prediction_id in (first[0], first[2]):
        start(store, prediction_id)
    assert store.redis.keys(f"{keys.PREFIX}:queue-line:*") == []
    again = queue(store, INTERACTIVE, 2)
    assert [p.queue_ticket for p in store.get_many(again)] == [1, 2]
    assert positions(store, again) == [0, 1]


def test_each_line_waits_for_every_line_served_before_it(store):
    single = queue(store, INTERACTIVE, 2)
    batch = queue(store, BATCH, 2)
    heavy = queue(store, HEAVY, 1)
    low = queue(store, LOW, 1)
    assert positions(store, single + batch + heavy + low) == [0, 1, 2, 3, 4, 5]
    # A single create after them is served before the batch: the batch items' positions rise.
    late = queue(store, INTERACTIVE, 1)
    assert positions(store, batch + late) == [3, 4, 2]
    for prediction_id in single + late:
        start(store, prediction_id)
    assert positions(store, batch + heavy + low) == [0, 1, 2, 3]


def test_a_requeued_prediction_takes_a_fresh_ticket_at_the_head_of_the_queue(store):
    batch = queue(store, BATCH, 2)
    start(store, batch[0])
    waiting = queue(store, INTERACTIVE, 1)
    assert positions(store, waiting + batch[1:]) == [0, 1]
    assert store.transition(batch[0], Status.STARTING, if_attempt=1, attempt=0)  # handed back
    handed = store.get(batch[0])
    assert (handed.queue_line, handed.queue_ticket) == (INTERACTIVE, 2)
    assert positions(store, [*waiting, batch[0], batch[1]]) == [0, 1, 2]


def test_a_prediction_that_is_not_queued_has_no_position(store):
    (running,) = queue(store, INTERACTIVE, 1)
    untracked = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={})
    store.create(untracked)  # stored without a ticket (before queue lines existed)
    start(store, running)
    assert positions(store, [running, untracked.id]) == [None, None]


def test_one_tenant_in_a_dispatcher_lane_counts_exactly_as_it_is_released(store, dispatcher):
    items = dispatch(store, dispatcher, 4, "t1", low=False)
    assert positions(store, items) == [0, 1, 2, 3]
    assert dispatcher.release(FAMILY) == 1
    assert positions(store, items) == [0, 1, 2, 3]
    assert take(store, DISPATCHED) == items[0]
    assert positions(store, items) == [None, 0, 1, 2]


def test_another_tenant_in_a_dispatcher_lane_is_counted_for_its_turns(store, dispatcher):
    backlog = dispatch(store, dispatcher, 6, "heavy", low=False)
    dispatcher.release(FAMILY)  # backlog[0] waits in Celery
    newcomer = dispatch(store, dispatcher, 3, "light", low=False)  # joins the ring at its head
    # Served: backlog[0] (released), then light and heavy in turn.
    assert positions(store, newcomer) == [1, 3, 5]
    assert positions(store, backlog) == [0, 2, 4, 6, 7, 8]
    order = []
    while dispatcher.release(FAMILY) or store.redis.llen(queues.priority_lists(FAMILY)[DISPATCHED]):
        order.append(take(store, DISPATCHED))
        waiting = [i for i in backlog + newcomer if i not in order]
        expected = {prediction_id: place for place, prediction_id in enumerate(ordered_rest(order, backlog, newcomer))}
        assert dict(zip(waiting, positions(store, waiting), strict=True)) == {i: expected[i] for i in waiting}
    assert order[:6] == [backlog[0], newcomer[0], backlog[1], newcomer[1], backlog[2], newcomer[2]]


def ordered_rest(started: list[str], backlog: list[str], newcomer: list[str]) -> list[str]:
    """The start order of what has not started: the round-robin order the test asserts at its end."""
    full = [backlog[0], newcomer[0], backlog[1], newcomer[1], backlog[2], newcomer[2], *backlog[3:]]
    return [i for i in full if i not in started]


def test_low_work_waits_for_all_normal_work_and_is_released_only_then(store, dispatcher):
    low_mine = dispatch(store, dispatcher, 2, "t1", low=True)
    normal = queue(store, INTERACTIVE, 1, tenant="t1", messages=dispatcher.messages)
    batch = dispatch(store, dispatcher, 1, "t2", low=False)
    low_theirs = dispatch(store, dispatcher, 1, "t2", low=True)  # a newcomer to the low ring: served first there
    # Normal work first (the single create, the other tenant's batch item), then the low lane in turns.
    assert positions(store, normal + batch) == [0, 1]
    assert positions(store, low_theirs + low_mine) == [2, 3, 4]
    assert dispatcher.release(FAMILY) == 1  # the batch item only: normal work still waits
    assert store.redis.llen(queues.priority_lists(FAMILY)[LOW]) == 0
    assert take(store, INTERACTIVE) == normal[0]
    assert dispatcher.release(FAMILY) == 0  # the batch item still waits in Celery
    assert take(store, DISPATCHED) == batch[0]
    assert positions(store, low_theirs + low_mine) == [0, 1, 2]
    assert dispatcher.release(FAMILY) == 1
    assert positions(store, low_theirs + low_mine) == [0, 1, 2]
    assert take(store, LOW) == low_theirs[0]
    dispatcher.release(FAMILY)
    assert take(store, LOW) == low_mine[0]
    assert positions(store, low_mine) == [None, 0]


def test_a_release_racing_another_one_never_sends_a_tenants_later_item_first(store, dispatcher, monkeypatch):
    items = dispatch(store, dispatcher, 2, "t1", low=False)
    write_messages = dispatcher._send
    # One release has claimed the first item and not yet written its message (another process, paused).
    monkeypatch.setattr(dispatcher, "_send", lambda lane, ids: None)
    assert dispatcher.release(FAMILY) == 1
    monkeypatch.setattr(dispatcher, "_send", write_messages)
    assert dispatcher.release(FAMILY) == 0  # the claim is in flight: nothing more, the second item waits
    write_messages(FAMILY, [items[0]])
    assert take(store, DISPATCHED) == items[0]
    assert dispatcher.release(FAMILY) == 1 and take(store, DISPATCHED) == items[1]


def test_creates_racing_from_many_tenants_get_unique_tickets_and_every_place_once(store):
    def create_two(index: int) -> list[str]:
        return queue(store, INTERACTIVE, 2, tenant=f"t{index % 7}")

    with ThreadPoolExecutor(16) as pool:
        ids = [prediction_id for pair in pool.map(create_two, range(40)) for prediction_id in pair]
    assert sorted(p.queue_ticket for p in store.get_many(ids)) == list(range(1, 81))
    assert sorted(positions(store, ids)) == list(range(80))
    in_line = [p.id for p in sorted(store.get_many(ids), key=lambda p: p.queue_ticket or 0)]
    for prediction_id in in_line[:40]:  # as a worker takes them: in ticket order
        start(store, prediction_id)
    assert positions(store, in_line[40:]) == list(range(40))


def keyspace(client: redis.Redis) -> dict[Any, Any]:
    """Every key with its value (hashes, lists, sorted sets, strings): to see that nothing changed."""
    readers: dict[Any, Callable[[Any], Any]] = {
        b"hash": client.hgetall,
        b"list": lambda key: client.lrange(key, 0, -1),
        b"zset": lambda key: client.zrange(key, 0, -1, withscores=True),
        b"string": client.get,
    }
    return {key: readers[client.type(key)](key) for key in client.keys("*")}


def single(tenant: str = "t1", **fields: Any) -> Prediction:
    return Prediction(tenant=tenant, model="kiln/sd2-depth2img", version="v", queue=FAMILY, input={}, **fields)


def test_a_single_create_stores_and_enqueues_what_the_general_path_does(store, dispatcher):
    """``create_one`` (one script) writes the record, index, run count, message and ticket that
    ``create_many`` and its transaction write, and answers the position a read would."""
    messages = dispatcher.messages
    queue(store, INTERACTIVE, 2, messages=messages)
    general = store.get(queue(store, INTERACTIVE, 1, messages=messages)[0])
    deadline = general.created_at + timedelta(minutes=5)
    one = single(deadline=deadline)

    position = store.create_one(one, messages.render(one.id, FAMILY, INTERACTIVE), INTERACTIVE)

    stored = store.get(one.id)
    assert stored == one
    assert (stored.queue_line, stored.queue_ticket, position) == (INTERACTIVE, 4, 3)
    assert positions(store, [general.id, one.id]) == [2, 3]
    assert stored.model_dump(exclude={"id", "created_at", "deadline", "queue_ticket"}) == general.model_dump(
        exclude={"id", "created_at", "deadline", "queue_ticket"}
    )
    assert store.redis.zscore(keys.deadlines(), one.id) == deadline.timestamp()
    assert store.redis.zscore(keys.tenant_predictions("t1"), one.id) == 0
    assert int(store.redis.get(keys.model_run_count("kiln/sd2-depth2img"))) == 4
    assert store.queued.depth("t1").tenant == 4
    assert [take(store, INTERACTIVE) for _ in range(4)][-1] == one.id  # its message, behind the others


def test_a_refused_single_create_writes_nothing(store, dispatcher):
    """Its id taken, or a queue cap full: ``AlreadyStored`` or ``QueueFull``, and no key changed."""
    messages = dispatcher.messages
    taken = store.get(queue(store, INTERACTIVE, 1, messages=messages)[0])
    before = keyspace(store.redis)
    twin = single(tenant="t2").model_copy(update={"id": taken.id})
    fresh = single(tenant="t1")

    with pytest.raises(AlreadyStored):
        store.create_one(twin, messages.render(twin.id, FAMILY, INTERACTIVE), INTERACTIVE)
    with pytest.raises(QueueFull) as tenant_full:
        store.create_one(fresh, messages.render(fresh.id, FAMILY, INTERACTIVE), INTERACTIVE, tenant_cap=1)
    with pytest.raises(QueueFull) as all_full:
        store.create_one(fresh, messages.render(fresh.id, FAMILY, INTERACTIVE), INTERACTIVE, total_cap=1)

    assert (tenant_full.value.scope, all_full.value.scope) == ("tenant", "global")
    assert keyspace(store.redis) == before


def test_a_single_create_sent_again_by_a_retry_answers_as_it_did_and_writes_nothing_twice(store, dispatcher):
    """redis-py sends a script again when its reply is lost with the connection: the second run finds
    the record the first wrote and answers the same position, with no second message, count or ticket;
    a record of another create under the same id is still refused."""
    messages = dispatcher.messages
    queue(store, INTERACTIVE, 2, messages=messages)
    one = single()
    message = messages.render(one.id, FAMILY, INTERACTIVE)
    first = store.create_one(one, message, INTERACTIVE)
    after_first = keyspace(store.redis)

    again = store.create_one(one.model_copy(update={"queue_ticket": None}), message, INTERACTIVE)

    assert again == first == 2
    assert keyspace(store.redis) == after_first
    with pytest.raises(AlreadyStored):
        later = single(created_at=one.created_at + timedelta(microseconds=1)).model_copy(update={"id": one.id})
        store.create_one(later, messages.render(one.id, FAMILY, INTERACTIVE), INTERACTIVE)


def test_a_single_create_stores_only_while_its_idempotency_claim_names_it(store, dispatcher):
    """A claim taken over by a retry of the request (its process looked dead), or lost in a failover,
    refuses the store with nothing written (``ClaimLost``): one key never names two predictions."""
    messages = dispatcher.messages
    claim = keys.idempotency("t1", "digest")
    taken_over, lost, owned = single(), single(), single()
    store.redis.set(claim, json.dumps({"fingerprint": "fp", "prediction_id": "the-retry's"}))
    before = keyspace(store.redis)

    with pytest.raises(ClaimLost):
        store.create_one(taken_over, messages.render(taken_over.id, FAMILY, INTERACTIVE), INTERACTIVE, claim=claim)
    with pytest.raises(ClaimLost):
        store.create_one(lost, messages.render(lost.id, FAMILY, INTERACTIVE), INTERACTIVE, claim=claim + ":gone")
    assert keyspace(store.redis) == before

    store.redis.set(claim, json.dumps({"fingerprint": "fp", "prediction_id": owned.id}))
    store.create_one(owned, messages.render(owned.id, FAMILY, INTERACTIVE), INTERACTIVE, claim=claim)
    assert store.get(owned.id) == owned


def test_a_single_create_that_reaches_a_replica_is_refused_as_a_write_there(server, dispatcher, tmp_path):
    """In a failover a client can reach a replica (the old primary back and still empty): its claim read
    there is missing, which must not answer "taken over" (409) but READONLY, as a write there would be,
    so that the client finds the primary and runs the create again."""
    one = single()
    with (
        RedisServer(tmp_path / "replica", appendonly=False, replica_of=server.port) as replica,
        redis.Redis.from_url(replica.url) as client,
    ):
        replica_store = PredictionStore(client)
        with pytest.raises(redis.exceptions.ReadOnlyError):
            replica_store.create_one(
                one, dispatcher.messages.render(one.id, FAMILY, INTERACTIVE), INTERACTIVE, claim="kiln:missing"
            )
        assert replica_store.get(one.id) is None
