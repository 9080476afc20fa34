"""Prediction store: atomic transitions that never leave a terminal state (fakeredis with Lua; the
races on a real redis-server, where two clients' commands really arrive at once)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import orjson
import pytest
import redis

from deploy.devstack.servers import RedisServer
from shared.db import keys
from shared.db.client import AlreadyStored, create_new
from shared.predictions.record import Prediction, new_ids
from shared.predictions.status import Status
from shared.predictions.store import ChunkQueue, ItemRecords, PredictionStore
from shared.scheduling.dispatcher import ChunkLane

# Rounds of the start/cancel race: each side wins about half of them, and a non-atomic guard fails within them.
RACE_ROUNDS = 300


@pytest.fixture
def store() -> PredictionStore:
    return PredictionStore(fakeredis.FakeRedis())


@pytest.fixture
def server_store(tmp_path) -> Iterator[PredictionStore]:
    """A store on a private redis-server on a free port (never the machine's own Redis)."""
    with RedisServer(tmp_path / "redis", appendonly=False) as server, redis.Redis.from_url(server.url) as client:
        yield PredictionStore(client)


def make(store: PredictionStore, tenant: str = "t1") -> Prediction:
    prediction = Prediction(tenant=tenant, model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
    store.create(prediction)
    return prediction


def test_create_then_get_round_trips_the_record(store):
    prediction = make(store)
    loaded = store.get(prediction.id)
    assert loaded == prediction
    assert loaded.status is Status.STARTING


def test_start_then_succeed(store):
    p = make(store)
    assert store.transition(p.id, Status.PROCESSING)
    assert store.transition(p.id, Status.SUCCEEDED, output=["out-0.png"], predict_time=1.5)
    loaded = store.get(p.id)
    assert (loaded.status, loaded.output, loaded.predict_time) == (Status.SUCCEEDED, ["out-0.png"], 1.5)


@pytest.mark.parametrize("terminal", [Status.SUCCEEDED, Status.FAILED, Status.CANCELED])
def test_terminal_states_are_final(store, terminal):
    p = make(store)
    store.transition(p.id, Status.PROCESSING)
    assert store.transition(p.id, terminal)
    for target in Status:
        if target is not Status.STARTING:
            assert not store.transition(p.id, target, error="late")
    loaded = store.get(p.id)
    assert loaded.status is terminal
    assert loaded.error is None


def test_double_completion_keeps_the_first(store):
    p = make(store)
    store.transition(p.id, Status.PROCESSING)
    assert store.transition(p.id, Status.SUCCEEDED, output=["a.png"])
    assert not store.transition(p.id, Status.SUCCEEDED, output=["b.png"])
    assert store.get(p.id).output == ["a.png"]


def test_cancel_while_queued_wins_over_a_late_start(store):
    p = make(store)
    assert store.request_cancel(p.id) is Status.STARTING
    assert store.status(p.id) is Status.CANCELED
    assert store.get(p.id).completed_at is not None
    assert not store.transition(p.id, Status.PROCESSING)
    assert store.status(p.id) is Status.CANCELED


def test_cancel_while_running_flags_it_for_the_worker(store):
    p = make(store)
    store.transition(p.id, Status.PROCESSING)
    assert not store.cancel_requested(p.id)
    assert store.request_cancel(p.id) is Status.PROCESSING
    assert store.status(p.id) is Status.PROCESSING
    assert store.cancel_requested(p.id)


def test_cancel_after_completion_changes_nothing(store):
    p = make(store)
    store.transition(p.id, Status.PROCESSING)
    store.transition(p.id, Status.SUCCEEDED)
    assert store.request_cancel(p.id) is Status.SUCCEEDED
    assert store.status(p.id) is Status.SUCCEEDED
    assert not store.cancel_requested(p.id)


def test_missing_prediction(store):
    assert store.get("nope") is None
    assert not store.transition("nope", Status.PROCESSING)
    assert store.request_cancel("nope") is None


@pytest.mark.integration  # a real redis-server: two connections, commands arriving at the same moment
def test_cancel_racing_start_has_exactly_one_winner(server_store):
    """Rounds of a start and a cancel sent at the same moment on two connections: either the start
    wins and the cancel only flags it, or the cancel wins and the start is refused; never both."""
    store = server_store
    winners: Counter[str] = Counter()
    with ThreadPoolExecutor(2) as pool:
        for round_number in range(RACE_ROUNDS):
            p = make(store)
            barrier = threading.Barrier(2)

            # Every fourth round one side lags by a millisecond, so that on a loaded machine, where the pool's
            # scheduling can hand every round to the same side, each side still wins some rounds.
            lag = {1: "start", 3: "cancel"}.get(round_number % 4)

            def start(prediction_id: str = p.id, at_once: threading.Barrier = barrier, lag: str | None = lag) -> bool:
                at_once.wait()
                if lag == "start":
                    time.sleep(0.001)
                return store.transition(prediction_id, Status.PROCESSING)

            def cancel(
                prediction_id: str = p.id, at_once: threading.Barrier = barrier, lag: str | None = lag
            ) -> Status | None:
                at_once.wait()
                if lag == "cancel":
                    time.sleep(0.001)
                return store.request_cancel(prediction_id)

            # Either may reach the barrier first: alternate which one is handed to the pool first.
            first, second = (start, cancel) if round_number % 2 else (cancel, start)
            futures = {task: pool.submit(task) for task in (first, second)}
            started, cancel_saw = futures[start].result(), futures[cancel].result()
            if started:
                # The start won: the cancel found it running and flagged it.
                assert cancel_saw is Status.PROCESSING
                assert store.cancel_requested(p.id)
                assert store.status(p.id) is Status.PROCESSING
            else:
                assert cancel_saw is Status.STARTING
                assert store.status(p.id) is Status.CANCELED
            # It left the queue exactly once, whoever won.
            assert int(store.redis.hget(keys.queued_by_tenant(), p.tenant) or 0) == 0
            winners["start" if started else "cancel"] += 1
    assert set(winners) == {"start", "cancel"}, f"the two never raced: {dict(winners)}"


def test_logs_append_while_the_attempt_runs_and_never_after(store):
    """A worker whose attempt stalled past its lease must not write into what the prediction became:
    another attempt's run, an ended one (whose logs data removal cleared), an expired record."""
    p = make(store)
    assert not store.append_log(p.id, "queued\n")
    assert store.transition(p.id, Status.PROCESSING, attempt=2)
    assert store.append_log(p.id, "a\n") and store.append_log(p.id, "b\n", if_attempt=2)
    assert not store.append_log(p.id, "from attempt 1\n", if_attempt=1)
    assert store.get(p.id).logs == "a\nb\n"
    assert store.transition(p.id, Status.STARTING, attempt=1)  # handed back
    assert store.append_log(p.id, "handed back\n", if_attempt=1, if_status=Status.STARTING)
    assert store.transition(p.id, Status.CANCELED)
    assert not store.append_log(p.id, "late\n")
    assert store.get(p.id).logs == "a\nb\nhanded back\n"
    store.redis.delete(keys.prediction(p.id), keys.prediction_logs(p.id))
    assert not store.append_log(p.id, "after expiry\n", if_status=Status.CANCELED)
    assert not store.redis.exists(keys.prediction_logs(p.id))


def test_list_is_newest_first_with_cursors_and_per_tenant(store):
    ids = [make(store).id for _ in range(5)]
    make(store, tenant="other")
    page, more = store.list_for_tenant("t1", limit=2)
    assert [p.id for p in page] == ids[::-1][:2] and more
    page2, more2 = store.list_for_tenant("t1", before=page[-1].id, limit=2)
    assert [p.id for p in page2] == ids[::-1][2:4] and more2
    page3, more3 = store.list_for_tenant("t1", before=page2[-1].id, limit=2)
    assert [p.id for p in page3] == [ids[0]] and not more3
    back, newer = store.list_for_tenant("t1", after=page2[0].id, limit=2)
    assert [p.id for p in back] == [p.id for p in page] and not newer


def twin_of(first: Prediction, tenant: str) -> Prediction:
    """Another tenant's prediction that drew the same id."""
    return Prediction(id=first.id, tenant=tenant, model=first.model, version="v", input={"prompt": "the twin's"})


@pytest.mark.integration  # a real redis-server: WATCH and the record scripts as Redis runs them
def test_a_create_whose_id_is_stored_is_refused_and_writes_nothing(server_store):
    store = server_store
    first = make(store, tenant="tenant-a")
    queue = "kiln:test:queue"

    with pytest.raises(AlreadyStored):
        store.create_many([twin_of(first, "tenant-b")], enqueue=lambda pipe, _: pipe.lpush(queue, "message"))

    assert store.get(first.id) == first
    assert store.list_for_tenant("tenant-b") == ([], False)
    assert store.redis.llen(queue) == 0
    assert store.queued.depth("tenant-b").tenant == 0
    assert store.queued.depth("tenant-a").tenant == 1


@pytest.mark.integration
def test_a_batch_chunk_with_a_stored_id_is_refused_whole(server_store):
    store = server_store
    first = make(store, tenant="tenant-a")
    others = new_ids(3)
    fields = {k: v for k, v in twin_of(first, "tenant-b").to_compact_hash().items() if k != "id"}

    def then(pipe) -> None:
        pipe.zadd(keys.tenant_predictions("tenant-b"), dict.fromkeys([*others, first.id], 0))

    with pytest.raises(AlreadyStored):
        store.create_records([(fields, others[:2]), (fields, [others[2], first.id])], then)

    assert store.get(first.id) == first
    assert store.get_many(others) == []
    assert store.list_for_tenant("tenant-b") == ([], False)


@pytest.mark.integration
def test_records_whose_transaction_failed_are_deleted_again(server_store):
    store = server_store
    ids = new_ids(2)
    fields = {k: v for k, v in twin_of(make(store), "t1").to_compact_hash().items() if k != "id"}

    def then(pipe) -> None:
        pipe.lpush(keys.prediction(ids[0]), "a list where a hash is")  # fails inside the transaction

    with pytest.raises(redis.ResponseError):
        store.create_records([(fields, ids)], then)

    assert store.get_many(ids) == []


@pytest.mark.integration
def test_a_key_made_between_the_check_and_the_write_fails_the_create(server_store):
    """``create_new`` (a batch's record): another client storing the key after the check but before
    the transaction is seen by the watch; the create checks again and is refused, the key made in
    between kept as it was."""
    client = server_store.redis
    key = keys.batch_record("b1")

    def then(pipe) -> None:
        if not client.exists(key):
            client.hset(key, "tenant", "tenant-a")  # on another connection, while the key is watched
        pipe.hset(key, "tenant", "tenant-b")

    with pytest.raises(AlreadyStored):
        create_new(client, [key], then)

    assert client.hgetall(key) == {b"tenant": b"tenant-a"}


def test_a_record_only_claimed_is_not_read_as_one(store):
    """Between claiming an id (HSETNX on ``id``) and writing the record, readers (an Idempotency-Key
    duplicate waiting for the first request's prediction) see no record rather than a broken one."""
    prediction = Prediction(tenant="t1", model="kiln/sd2-depth2img", version="v", input={"prompt": "x"})
    store.redis.hsetnx(keys.prediction(prediction.id), "id", f'"{prediction.id}"')
    assert store.get(prediction.id) is None
    assert store.get_many([prediction.id]) == []
    store.redis.delete(keys.prediction(prediction.id))
    store.create(prediction)
    assert store.get(prediction.id) == prediction


@pytest.mark.integration
def test_a_batch_chunk_sent_again_by_a_retry_is_written_once_and_another_creates_record_still_refuses_it(
    server_store,
):
    """``store_batch_chunk.lua`` run again by redis-py's retry (its reply lost with the connection) finds
    the records its first run wrote (their tenant and created_at are the chunk's): it answers written,
    so the chunk is neither drawn again under new ids nor queued twice; a chunk of another tenant's
    create whose id is stored is still refused, with nothing written."""
    store = server_store
    ids = new_ids(3)
    fields = {k: v for k, v in twin_of(make(store), "t1").to_compact_hash().items() if k not in {"id", "input"}}
    chunk = [ItemRecords(fields, ids, ("input",), [(orjson.dumps({"prompt": f"line {n}"}),) for n in range(3)])]
    lane = ChunkLane("sd2:3", "sd2", "3", ids)
    queue = ChunkQueue("t1", "batch-1", ids, 0, {"kiln/sd2-depth2img": 3}, [lane], 3600)
    runs = int(store.redis.get(keys.model_run_count("kiln/sd2-depth2img")) or 0)
    store.create_batch_chunk(chunk, queue)
    written = store.get_many(ids)
    queued = store.redis.lrange(keys.dispatch_queue("sd2:3", "t1"), 0, -1)

    store.create_batch_chunk(chunk, queue)

    assert store.get_many(ids) == written
    assert [p.input for p in written] == [{"prompt": f"line {n}"} for n in range(3)]
    assert [(p.queue_line, p.queue_ticket) for p in written] == [(3, 1), (3, 2), (3, 3)]
    assert store.redis.lrange(keys.dispatch_queue("sd2:3", "t1"), 0, -1) == queued == [i.encode() for i in ids]
    assert store.redis.lrange(keys.batch_items("batch-1"), 0, -1) == [i.encode() for i in ids]
    assert int(store.redis.get(keys.model_run_count("kiln/sd2-depth2img"))) == runs + 3
    other = {**fields, "tenant": orjson.dumps("t2")}
    with pytest.raises(AlreadyStored):
        store.create_batch_chunk(
            [ItemRecords(other, [ids[0], "fresh-id"], ("input",), [(b"{}",), (b"{}",)])],
            ChunkQueue(
                "t2",
                "batch-2",
                [ids[0], "fresh-id"],
                0,
                {"m": 2},
                [ChunkLane("sd2:3", "sd2", "3", [ids[0], "fresh-id"])],
                60,
            ),
        )
    assert store.get_many(ids) == written
    assert store.get("fresh-id") is None
    assert not store.redis.exists(keys.dispatch_queue("sd2:3", "t2"), keys.batch_items("batch-2"))
