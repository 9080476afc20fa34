"""Prediction records in Redis, with atomic status transitions.

Every status change runs as one Lua script (in ``shared/db/lua/``, each starting with
``set_status.lua``) that checks the current status against the state table
(``shared.predictions.status.ALLOWED_SOURCES``, rendered into each script), so a cancel racing a start, a
duplicate completion or a late redelivery can never move a prediction out of a terminal state.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio
from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from shared.db import keys, lua
from shared.db.client import AlreadyStored, newest_first_page, run_script
from shared.predictions import retention
from shared.predictions.record import Prediction, format_timestamp, utcnow
from shared.predictions.status import Status
from shared.scheduling.dispatcher import ChunkLane
from shared.scheduling.queue_counters import QueuedCounters, QueueFull, counter_keys
from shared.scheduling.queue_lines import QueueLines, lines_before

# Caps left unset: more than Redis could ever hold.
_UNCAPPED = 2**62
# Records that share fields: the fields (encoded, without ``id``) and the records' ids.
RecordGroup = tuple[Mapping[str, bytes], Sequence[str]]


@dataclass(frozen=True)
class ItemRecords:
    """Records ``create_item_records`` writes alike: the fields (encoded, without ``id``) each holds, the
    names of those each has a value of its own of (``own``), the ids, and per id its own values."""

    fields: Mapping[str, bytes]
    ids: Sequence[str]
    own: Sequence[str] = ()
    values: Sequence[Sequence[EncodableT]] = ()


@dataclass(frozen=True)
class ChunkQueue:
    """What ``create_batch_chunk`` queues besides the records: the tenant's and batch's, the entries of the
    batch's item list (ids and refused lines; ``refused`` of them refused), the run counts per model, the
    lanes, and how long the item list is kept."""

    tenant: str
    batch_id: str
    entries: Sequence[str]
    refused: int
    runs: Mapping[str, int]
    lanes: Sequence[ChunkLane]
    items_ttl_s: int


def _record_args(groups: Sequence[ItemRecords]) -> list[EncodableT]:
    """``groups`` as ``records.lua`` lays records out."""
    args: list[EncodableT] = []
    for group in groups:
        args += [len(group.fields), *(x for pair in group.fields.items() for x in pair)]
        args += [len(group.own), *group.own, len(group.ids)]
        if group.own:
            for prediction_id, values in zip(group.ids, group.values, strict=True):
                args.append(prediction_id)
                args += values
        else:
            args += group.ids
    return args


log = logging.getLogger(__name__)


def _token() -> str:
    """A status-changing call's token (JSON): the script keeps it on the record, so a retry of the same call
    (its reply lost to a dropped connection or a failover) recognises its own change instead of refusing it."""
    return _encode(uuid.uuid4().hex)


def _encode(value: Any) -> str:
    if isinstance(value, datetime):
        value = format_timestamp(value)
    return json.dumps(value)


class ClaimLost(Exception):
    """A create's Idempotency-Key claim no longer names its prediction (a retry of the request took it over,
    or a failover lost it): nothing was stored, so that the key never names two predictions."""

    def __init__(self, prediction_id: str) -> None:
        super().__init__(f"the Idempotency-Key claim of {prediction_id} names another prediction or none")


@dataclass(frozen=True)
class TokenCheck:
    """A token a single create's store checks, and takes one request from the rate limit of, before it
    writes anything (``AsyncCreates.create_one``): as ``auth_take.lua`` does, in the create's own round
    trip. ``bootstrap``: valid without a record (``KILN_API_TOKEN``); ``rate_per_s`` and ``burst``: its limits."""

    digest: str
    bootstrap: bool
    rate_per_s: float
    burst: int


class TokenRefused(Exception):
    """The create's token (``TokenCheck``) is unknown or revoked: nothing was stored or taken."""


class RateLimited(Exception):
    """The create's token (``TokenCheck``) is at its rate limit: nothing was stored; ``tokens_left`` in
    its bucket."""

    def __init__(self, tokens_left: float) -> None:
        super().__init__(f"rate limit reached ({tokens_left:g} left)")
        self.tokens_left = tokens_left


@dataclass(frozen=True)
class StoredOne:
    """A single create stored (``AsyncCreates.create_one``): its queue position (None if not waiting), and
    the tokens left in its token's bucket when the store checked the token (else None)."""

    position: int | None
    tokens_left: float | None = None


class PredictionStore:
    def __init__(self, redis: Redis, retention_s: float = 3600, record_retention_s: float = 30 * 24 * 3600) -> None:
        self.redis = redis
        self.retention_s = retention_s
        # The record never goes before its data (retention) does.
        self.record_retention_s = max(record_retention_s, retention_s)
        self._transition = lua.register(redis, "store_transition")
        self._create_one = lua.register(redis, "store_create")
        self._update_running = lua.register(redis, "store_update_running")
        self._append_log = lua.register(redis, "store_append_log")
        self._request_cancel = lua.register(redis, "store_request_cancel")
        self._store_records = lua.register(redis, "store_records")
        self._store_batch_chunk = lua.register(redis, "store_batch_chunk")
        self._claim_ended = lua.register(redis, "claim_due")
        self.queued = QueuedCounters(redis)
        # Where each queued prediction stands (``queue_position``).
        self.lines = QueueLines(redis)

    def create(self, prediction: Prediction, *, tenant_cap: int | None = None, total_cap: int | None = None) -> None:
        self.create_many([prediction], tenant_cap=tenant_cap, total_cap=total_cap)

    def create_many(
        self,
        predictions: Sequence[Prediction],
        *,
        tenant_cap: int | None = None,
        total_cap: int | None = None,
        enqueue: Callable[[Pipeline, int], None] | None = None,
    ) -> None:
        """Store queued predictions of one tenant: count them against the caps (all or none:
        ``QueueFull`` stores nothing), then write their records and the rest (``create_records``:
        ``AlreadyStored``, nothing stored, if a record of one of their ids exists).

        ``enqueue``, called with the transaction that follows the records and how many of the tenant's
        predictions were already queued, queues them there (their Celery messages, rendered by
        ``shared.scheduling.task_messages``, or the dispatcher's lists, and their queue-line tickets),
        so a worker never pops an id whose record is missing, and a record whose enqueueing failed is
        deleted again."""
        if not predictions:
            return
        tenant = predictions[0].tenant
        if any(p.tenant != tenant for p in predictions):
            raise ValueError("create_many stores one tenant's predictions")
        families = [p.queue for p in predictions]
        queued_before = self.queued.admit(tenant, families, tenant_cap or _UNCAPPED, total_cap or _UNCAPPED)

        def then(pipe: Pipeline) -> None:
            pipe.zadd(keys.tenant_predictions(tenant), {p.id: 0 for p in predictions})
            if deadlines := {p.id: p.deadline.timestamp() for p in predictions if p.deadline}:
                pipe.zadd(keys.deadlines(), deadlines)
            for model, count in Counter(p.model for p in predictions).items():
                pipe.incrby(keys.model_run_count(model), count)
            if enqueue is not None:
                enqueue(pipe, queued_before)

        try:
            self.create_records([(_own_fields(p.to_compact_hash()), [p.id]) for p in predictions], then)
        except BaseException:
            self.queued.release(tenant, families)
            raise

    def create_one(
        self,
        prediction: Prediction,
        message: tuple[str, str],
        line: int,
        *,
        tenant_cap: int | None = None,
        total_cap: int | None = None,
        claim: str | None = None,
    ) -> int | None:
        """Store one queued prediction and enqueue it, in one round trip (``store_create.lua``): what
        ``create_many`` and the transaction its ``enqueue`` fills do for a single create, its Celery
        ``message`` (``(list, body)``, ``shared.scheduling.task_messages``) pushed and a ticket of ``line``
        taken. All or nothing, like ``create_many``: ``QueueFull`` over a cap, ``AlreadyStored`` when a
        record of its id exists, ``ClaimLost`` when ``claim`` (the key of its Idempotency-Key's claim) no
        longer names it, with nothing written. Sets the prediction's ``queue_line`` and ``queue_ticket``,
        and returns its ``queue_position`` as the script read it (None if not waiting).
        ``AsyncCreates.create_one`` is the same for the event loop."""
        args = _create_one_args(prediction, message, line, tenant_cap, total_cap)
        found = self._create_one(keys=[claim] if claim else [], args=args)
        return _created_one(found, prediction, line, tenant_cap, total_cap)

    def create_records(self, groups: Sequence[RecordGroup], then: Callable[[Pipeline], None]) -> None:
        """Write new records, then run the transaction ``then`` queues (what refers to them: the
        tenant's index, queues, counts), so a worker never finds an id whose record is missing.

        ``groups``: the fields some records share (encoded as ``Prediction.to_compact_hash``, without
        ``id``) and their ids. Each record is first claimed by writing its ``id`` field alone with
        HSETNX, which does nothing where a record exists: if one of the ids is taken, the claims made
        are deleted and ``AlreadyStored`` raised, so a record is never written over, and nothing
        refers to an id that is not the caller's. Groups of several ids are written by one script
        (their shared fields sent once), single records in the transaction. If writing fails, the
        records are deleted again."""
        ids = [i for _, group_ids in groups for i in group_ids]
        self._claim(ids)
        try:
            shared: list[EncodableT] = []
            for fields, group_ids in groups:
                if len(group_ids) > 1:
                    shared += [
                        len(fields),
                        *(x for pair in fields.items() for x in pair),
                        0,
                        len(group_ids),
                        *group_ids,
                    ]
            if shared:
                self._store_records(args=shared)
            with self.redis.pipeline(transaction=True) as pipe:
                for fields, group_ids in groups:
                    if len(group_ids) == 1:
                        record: dict[FieldT, EncodableT] = {name: value for name, value in fields.items()}
                        pipe.hset(keys.prediction(group_ids[0]), mapping=record)
                then(pipe)
                pipe.execute()
        except BaseException:
            self._delete_records(ids)
            raise

    def create_batch_chunk(self, groups: Sequence[ItemRecords], queue: ChunkQueue) -> None:
        """A batch object's chunk of items stored and queued in one atomic step (``store_batch_chunk.lua``):
        if one of the ids has a record (``AlreadyStored``), nothing is written; else the dispatcher's
        lists and queue-line tickets, the records (each with its ticket), the tenant's index, the run counts
        and the batch's item list and counts. The same call sent again by redis-py's retry (its reply lost
        with the connection) finds its own records and writes nothing twice."""
        args: list[EncodableT] = [queue.tenant, queue.batch_id, queue.items_ttl_s, queue.refused]
        args += [len(queue.entries), *queue.entries, len(queue.runs)]
        for model, count in queue.runs.items():
            args += [model, count]
        args.append(len(queue.lanes))
        for lane in queue.lanes:
            args += [lane.name, lane.family, lane.line, len(lane.ids), *lane.ids]
        taken = self._store_batch_chunk(args=args + _record_args(groups))
        if taken:
            raise AlreadyStored([key.decode() if isinstance(key, bytes) else key for key in taken])

    def _claim(self, prediction_ids: Sequence[str]) -> None:
        """Each id's record made with its ``id`` field alone, where no record of it exists; if one
        exists, the claims made here are deleted again and ``AlreadyStored`` raised."""
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                pipe.hsetnx(keys.prediction(prediction_id), "id", _encode(prediction_id))
            claimed = pipe.execute()
        if all(claimed):
            return
        taken = [keys.prediction(i) for i, ours in zip(prediction_ids, claimed, strict=True) if not ours]
        self._delete_records([i for i, ours in zip(prediction_ids, claimed, strict=True) if ours])
        raise AlreadyStored(taken)

    def _delete_records(self, prediction_ids: Sequence[str]) -> None:
        """Best effort: the caller's error, not a second one, is what the create answers."""
        try:
            self.redis.delete(*[keys.prediction(i) for i in prediction_ids])
        except RedisError as exc:
            log.warning("%d records of a failed create not deleted: %s", len(prediction_ids), exc)

    def get(self, prediction_id: str) -> Prediction | None:
        found = self.get_many([prediction_id])
        return found[0] if found else None

    def get_many(self, prediction_ids: Sequence[str]) -> list[Prediction]:
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                pipe.hgetall(keys.prediction(prediction_id))
                pipe.get(keys.prediction_logs(prediction_id))
            replies = pipe.execute()
        records = [
            (_decode_hash(fields), logs)
            for fields, logs in zip(replies[::2], replies[1::2], strict=True)
            if _is_written(fields)
        ]
        refs = sorted({ref for fields, _ in records if (ref := _shared_ref(fields))})
        shared: dict[str, dict[bytes, bytes]] = {}
        if refs:
            with self.redis.pipeline(transaction=False) as pipe:
                for ref in refs:
                    pipe.hgetall(ref)
                shared = dict(zip(refs, pipe.execute(), strict=True))
        return [
            Prediction.from_redis_hash(_with_shared(fields, shared), (logs or b"").decode()) for fields, logs in records
        ]

    def transition(self, prediction_id: str, target: Status, *, if_attempt: int | None = None, **fields: Any) -> bool:
        """Move to ``target`` and set ``fields`` atomically, if the state table (``shared.predictions.status``)
        allows the move from the current status (and, when ``if_attempt`` is given, only if that
        attempt is still the current one).

        This is the bare status change: a terminal status has consequences (retention, metrics, the
        ``completed`` webhook) that only ``shared.predictions.lifecycle.PredictionLifecycle`` adds."""
        args = [_encode(target.value), _attempt_arg(if_attempt), prediction_id, _token(), *_field_args(fields)]
        changed: int | None = self._transition(keys=record_keys(prediction_id), args=args)
        return changed == 1

    def update_while_processing(self, prediction_id: str, *, if_attempt: int | None = None, **fields: Any) -> bool:
        """Set fields of a running prediction (e.g. its output before it completes); no-op otherwise."""
        args = [_attempt_arg(if_attempt), *_field_args(fields)]
        changed: int | None = self._update_running(keys=record_keys(prediction_id)[:2], args=args)
        return changed == 1

    def schedule_retention(self, prediction_ids: Sequence[str]) -> None:
        """Finished predictions' inputs, outputs and logs are deleted ``retention_s`` from now (or after
        each one's own ``retention_s``: ``retention.data_kept_s``), and their records
        ``record_retention_s`` from now (``shared.predictions.retention``)."""
        now = time.time()
        wishes = self._retention_wishes(prediction_ids)
        data = [
            ("prediction", i, now + retention.data_kept_s(self.retention_s, *wish))
            for i, wish in zip(prediction_ids, wishes, strict=True)
        ]
        records = [("record", i, now + self.record_retention_s) for i in prediction_ids]
        retention.schedule_many(self.redis, data + records)

    def claim_ended(self, ended_before: float, lease_s: float, limit: int = 100) -> list[str]:
        """Predictions that ended before ``ended_before`` and whose ending is still not followed up
        (``keys.predictions_ended``), claimed: each moves ``lease_s`` later in the set, so no other
        claimer takes it meanwhile, and one whose claimer dies is due again."""
        replies = self._claim_ended(keys=[keys.predictions_ended()], args=[ended_before, lease_s, limit])
        return [reply.decode() for reply in replies]

    def forget_ended(self, prediction_ids: Sequence[str]) -> None:
        """These predictions' endings are followed up: out of the ended set."""
        if prediction_ids:
            self.redis.zrem(keys.predictions_ended(), *prediction_ids)

    def status(self, prediction_id: str) -> Status | None:
        raw = self.redis.hget(keys.prediction(prediction_id), "status")
        return None if raw is None else Status(json.loads(raw))

    def request_cancel(self, prediction_id: str, queued_ends: Status = Status.CANCELED) -> Status | None:
        """End a queued prediction now (``queued_ends``: canceled, or aborted when its deadline
        passed), or flag a running one. Returns the status it had (``STARTING``: ended by this call).
        The bare status change, as ``transition``."""
        return self.request_cancel_many([prediction_id], queued_ends)[0]

    def request_cancel_many(
        self, prediction_ids: Sequence[str], queued_ends: Status = Status.CANCELED
    ) -> list[Status | None]:
        """``request_cancel`` for each id, in one round trip (each still its own atomic script)."""
        now = _encode(utcnow())
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                self._request_cancel(
                    keys=record_keys(prediction_id),
                    args=[now, prediction_id, queued_ends.value, _token()],
                    client=pipe,
                )
            replies = pipe.execute()
        return [None if found is None else Status(json.loads(found)) for found in replies]

    def cancel_requested(self, prediction_id: str) -> bool:
        return self.redis.hget(keys.prediction(prediction_id), "cancel_requested") == b"true"

    def completed_webhook_attempted(self, prediction_id: str) -> None:
        """The prediction's ``completed`` webhook was attempted: kept 0 s, its data goes now (it waited
        for the attempt, ``retention.data_kept_s``)."""
        if self._retention_wishes([prediction_id])[0][0] == 0:
            retention.bring_forward(self.redis, "prediction", prediction_id, time.time())

    def _retention_wishes(self, prediction_ids: Sequence[str]) -> list[tuple[int | None, bool]]:
        """Each prediction's own ``retention_s`` (None when it has none), and whether its webhook wants
        the ``completed`` event: read from its record, or from the fields it shares with its batch's twins."""
        records = self._fields_of([keys.prediction(i) for i in prediction_ids], (*_RETENTION_FIELDS, "shared_fields"))
        refs = sorted({ref for record in records if (ref := record["shared_fields"])})
        shared = dict(zip(refs, self._fields_of([json.loads(ref) for ref in refs], _RETENTION_FIELDS), strict=True))
        return [_retention_wish(record, shared.get(record["shared_fields"] or b"", {})) for record in records]

    def _fields_of(self, hashes: Sequence[str], fields: Sequence[str]) -> list[dict[str, bytes | None]]:
        """``fields`` of each hash (None where one is missing), in one round trip."""
        with self.redis.pipeline(transaction=False) as pipe:
            for name in hashes:
                pipe.hmget(name, fields)
            return [dict(zip(fields, values, strict=True)) for values in pipe.execute()]

    def append_log(
        self, prediction_id: str, text: str, *, if_attempt: int | None = None, if_status: Status = Status.PROCESSING
    ) -> bool:
        """Append ``text`` to the logs of a prediction in status ``if_status`` (under attempt ``if_attempt``,
        when given) and announce it; False, writing nothing, otherwise: a worker whose attempt stalled past
        its lease never writes into what the prediction became meanwhile (a removed one's cleared logs, an
        expired record's key)."""
        appended: int = self._append_log(
            keys=[
                keys.prediction(prediction_id),
                keys.prediction_logs(prediction_id),
                keys.prediction_events(prediction_id),
            ],
            args=[_attempt_arg(if_attempt), _encode(if_status.value), text, json.dumps({"logs": text})],
        )
        return appended == 1

    def list_for_tenant(
        self, tenant: str, *, before: str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[Prediction], bool]:
        """Newest first. ``before``/``after`` are ids bounding the page (exclusive).

        Returns the page and whether more exist beyond it in the direction of travel.
        """
        ids, more = newest_first_page(
            self.redis, keys.tenant_predictions(tenant), before=before, after=after, limit=limit
        )
        return self.get_many(ids), more


async def read_prediction(client: redis.asyncio.Redis, prediction_id: str) -> Prediction | None:
    """``PredictionStore.get`` for the event loop (an asyncio client)."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.prediction(prediction_id))
        pipe.get(keys.prediction_logs(prediction_id))
        fields, logs = await pipe.execute()
    if not _is_written(fields):
        return None
    decoded = _decode_hash(fields)
    ref = _shared_ref(decoded)
    shared = {ref: await client.hgetall(ref)} if ref else {}
    return Prediction.from_redis_hash(_with_shared(decoded, shared), (logs or b"").decode())


# What decides how long a prediction's data is kept (``PredictionStore.schedule_retention``).
_RETENTION_FIELDS = ("retention_s", "webhook", "webhook_events_filter")


def _retention_wish(own: Mapping[str, bytes | None], shared: Mapping[str, bytes | None]) -> tuple[int | None, bool]:
    """A record's ``retention_s`` and whether its webhook wants ``completed`` (``Prediction.wants_event``),
    a field set on the record winning over the shared one."""
    value = {name: json.loads(raw) if (raw := own[name] or shared.get(name)) else None for name in _RETENTION_FIELDS}
    events = value["webhook_events_filter"]
    return value["retention_s"], value["webhook"] is not None and (events is None or "completed" in events)


def record_keys(prediction_id: str) -> list[str]:
    """The KEYS of a script that changes a prediction's status (``shared/db/lua/set_status.lua``)."""
    return [keys.prediction(prediction_id), keys.prediction_events(prediction_id), keys.running(), *counter_keys()]


def _attempt_arg(attempt: int | None) -> str:
    return "" if attempt is None else json.dumps(attempt)


def _field_args(fields: dict[str, Any]) -> list[str]:
    return [item for name, value in fields.items() for item in (name, _encode(value))]


def _is_written(fields: Mapping[bytes, bytes]) -> bool:
    """A record whose fields are written, not one only claimed (``create_records`` writes its ``id``
    first, alone, then the rest): a reader between the two sees no record yet."""
    return any(name != b"id" for name in fields)


def _shared_ref(fields: dict[str, str]) -> str | None:
    """The key of the fields a batch item's record shares with its twins (``keys.batch_shared_fields``)."""
    ref: str | None = json.loads(fields["shared_fields"]) if "shared_fields" in fields else None
    return ref


def _with_shared(fields: dict[str, str], shared: dict[str, Any]) -> dict[str, str]:
    """The record with the shared fields it does not hold itself (a field set on the record wins)."""
    ref = _shared_ref(fields)
    if ref is None:
        return fields
    return {"input": "{}"} | _decode_hash(shared.get(ref) or {}) | fields


def _own_fields(record: Mapping[Any, Any]) -> dict[str, bytes]:
    """A record's fields but its ``id`` (``create_records`` writes the id itself)."""
    return {name: value for name, value in record.items() if name != "id"}


def _decode_hash(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


class AsyncCreates:
    """``PredictionStore.create_one`` on an asyncio client: a create's one round trip awaited on the event
    loop, so the intake thread that validated it is not held across it (a thread that waits on Redis must
    win the GIL back from the busy event loop, which cost a loaded API a fifth of its creates)."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._create_one = lua.register(client, "store_create")

    async def create_one(
        self,
        prediction: Prediction,
        message: tuple[str, str],
        line: int,
        *,
        tenant_cap: int | None = None,
        total_cap: int | None = None,
        claim: str | None = None,
        token: TokenCheck | None = None,
    ) -> StoredOne:
        """``PredictionStore.create_one``, and with ``token``, that token checked and one request taken
        from its rate limit first, in the same script: ``TokenRefused`` or ``RateLimited`` with nothing
        written (``store_create.lua``)."""
        args = _create_one_args(prediction, message, line, tenant_cap, total_cap, token)
        found = await run_script(self._create_one, [claim] if claim else [], args)
        if found[0] == -5:
            raise TokenRefused(prediction.tenant)
        if found[0] == -6:
            raise RateLimited(float(found[1]))
        position = _created_one(found, prediction, line, tenant_cap, total_cap)
        return StoredOne(position, float(found[4]) if token is not None else None)


def _create_one_args(
    prediction: Prediction,
    message: tuple[str, str],
    line: int,
    tenant_cap: int | None,
    total_cap: int | None,
    token: TokenCheck | None = None,
) -> list[EncodableT]:
    """ARGV of ``store_create.lua``."""
    before = [str(step) for step in lines_before(line)]
    checked: list[EncodableT] = (
        [] if token is None else [token.digest, int(token.bootstrap), token.rate_per_s, token.burst]
    )
    fields = [x for pair in prediction.to_compact_hash().items() for x in pair]
    deadline = repr(prediction.deadline.timestamp()) if prediction.deadline else ""
    list_key, body = message
    return [
        *(prediction.id, prediction.tenant, prediction.queue, tenant_cap or _UNCAPPED, total_cap or _UNCAPPED),
        *(prediction.model, deadline, list_key, body, str(line), len(before), *before, len(checked), *checked),
        *fields,
    ]


def _created_one(
    found: list[int], prediction: Prediction, line: int, tenant_cap: int | None, total_cap: int | None
) -> int | None:
    """What ``store_create.lua`` answered: the queue position (its ticket set on ``prediction``), or the
    refusal raised."""
    if found[0] == -1:
        raise QueueFull("tenant", tenant_cap or _UNCAPPED)
    if found[0] == -2:
        raise QueueFull("global", total_cap or _UNCAPPED)
    if found[0] == -3:
        raise AlreadyStored([keys.prediction(prediction.id)])
    if found[0] == -4:
        raise ClaimLost(prediction.id)
    ticket, position = found[2], found[3]
    prediction.queue_line, prediction.queue_ticket = line, ticket
    return position if position >= 0 else None
