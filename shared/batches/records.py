"""Batches as objects (``/v1/batches``): the record, its items in submission order, its one webhook.

A batch's record is a Redis hash (``keys.batch_record``): who made it, its status, when, its
webhook, and per-status counts of its items that the items' own status changes keep
(``shared.batches.counts``). Its items are a list (``keys.batch_items``) of prediction ids, and of
refused items with their line number and problem, in the order they were submitted: the results
file reads it in pages. When the last item ends, the Lua script that ended it files the batch as
finished; ``BatchSettler`` then records its one ``completed`` webhook (a maintenance job of every
worker, and the API right after a cancel), under a delivery id made from the batch id, so however
many settlers race, it is recorded once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from redis import Redis

from shared.batches.counts import CANCELED, COMPLETED, QUEUED, RUNNING, VALIDATING
from shared.db import keys, lua
from shared.db.client import as_text, create_new, newest_first_page
from shared.predictions.record import format_timestamp, new_id
from shared.predictions.status import Status

if TYPE_CHECKING:
    from redis.client import Pipeline
    from redis.typing import EncodableT, FieldT

# How long a batch's items are given to finish; its keys are kept that long plus its items' record
# retention (``BatchStore.ttl_s``), so the fields its items' records share outlive those records.
BATCH_TTL_S = 7 * 24 * 3600
# Marks a refused item in the item list.
INVALID_MARK = "!"
# A settler that took a finished batch and died: another takes it after this long.
SETTLE_LEASE_S = 60.0


@dataclass
class Batch:
    id: str
    tenant: str
    status: str
    created_at: float
    base_url: str
    completed_at: float | None = None
    webhook: str | None = None
    # Where the items came from: "inline" or the input file's URL.
    source: str = "inline"
    # Items submitted (lines of the file), of which ``refused`` were invalid and never ran.
    total: int = 0
    refused: int = 0
    cancel_requested: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # How long after it ends the inputs its items share are kept (``BatchSettler``): the longest its
    # items keep their data, when each gave its own ``retention_s``; None: KILN_RETENTION_S.
    retention_s: int | None = None
    # Its items' data and its shared inputs were deleted (``DELETE``, or at retention).
    data_removed: bool = False

    @property
    def shown_status(self) -> str:
        """``running`` once any item started or ended, until the batch ends."""
        if self.status == QUEUED and any(self.counts.get(s.value, 0) for s in Status if s is not Status.STARTING):
            return RUNNING
        return self.status

    @classmethod
    def from_hash(cls, fields: Mapping[bytes | str, bytes | str]) -> Batch:
        raw = {as_text(k): as_text(v) for k, v in fields.items()}
        completed = raw.get("completed_at")
        return cls(
            id=raw["id"],
            tenant=raw["tenant"],
            status=raw["status"],
            created_at=float(raw["created_at"]),
            base_url=raw.get("base_url", ""),
            completed_at=float(completed) if completed else None,
            webhook=raw.get("webhook") or None,
            source=raw.get("source", "inline"),
            total=int(raw.get("total", 0)),
            refused=int(raw.get("refused", 0)),
            cancel_requested="cancel_requested" in raw,
            counts={name[2:]: max(0, int(value)) for name, value in raw.items() if name.startswith("n:")},
            retention_s=int(raw["retention_s"]) if "retention_s" in raw else None,
            data_removed="data_removed" in raw,
        )


def is_record(fields: Mapping[bytes | str, bytes | str]) -> bool:
    """Whether a batch record's fields are a whole record: a hash of a few fields alone (written as the
    record expired, before every write checked it exists) is none."""
    return b"id" in fields or "id" in fields


def batch_path(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


def render_batch(batch: Batch, base_url: str | None = None) -> dict[str, Any]:
    """The batch object clients and its webhook see."""
    base = batch.base_url if base_url is None else base_url
    get_url = f"{base}{batch_path(batch.id)}"
    counts = {status.value: batch.counts.get(status.value, 0) for status in Status}
    return {
        "id": batch.id,
        "status": batch.shown_status,
        "source": batch.source,
        "counts": counts | {"total": batch.total, "invalid": batch.refused},
        "created_at": _timestamp(batch.created_at),
        "completed_at": _timestamp(batch.completed_at),
        "webhook": batch.webhook,
        "data_removed": batch.data_removed,
        "urls": {
            "get": get_url,
            "cancel": f"{get_url}/cancel",
            "predictions": f"{get_url}/predictions",
            "results": f"{get_url}/results",
            "web": f"{base}/playground/batches/{batch.id}",
        },
    }


def _timestamp(unix: float | None) -> str | None:
    return None if unix is None else format_timestamp(datetime.fromtimestamp(unix, UTC))


@dataclass(frozen=True)
class RefusedItem:
    line: int
    problem: dict[str, Any]


def invalid_entry(item: RefusedItem) -> str:
    return INVALID_MARK + orjson.dumps({"line": item.line, "problem": item.problem}).decode()


def parse_entry(entry: bytes | str) -> str | RefusedItem:
    """A prediction id, or the refused item an entry of the item list stands for."""
    text = as_text(entry)
    if not text.startswith(INVALID_MARK):
        return text
    found = json.loads(text[1:])
    return RefusedItem(found["line"], found["problem"])


class BatchStore:
    def __init__(self, redis: Redis, record_retention_s: float = 30 * 24 * 3600) -> None:
        self.redis = redis
        # An ended batch's record is kept this long, as its items' are (``expire``, by the janitor).
        self.record_retention_s = record_retention_s
        # A batch's keys (record, items, shared fields) expire this long after it was created: the backstop
        # for a batch that never ends.
        self.ttl_s = int(BATCH_TTL_S + record_retention_s)
        self._seal = lua.register(redis, "batch_seal")
        self._claim_finished = lua.register(redis, "claim_due")
        self._set_fields = lua.register(redis, "batch_record_set")

    def create(
        self, tenant: str, base_url: str, webhook: str | None, source: str, total: int, batch_id: str | None = None
    ) -> Batch:
        """A new batch, ``validating`` until ``seal``; ``AlreadyStored``, nothing written, if a batch
        of that id exists."""
        batch = Batch(
            id=batch_id or new_id(),
            tenant=tenant,
            status=VALIDATING,
            created_at=time.time(),
            base_url=base_url,
            webhook=webhook,
            source=source,
            total=total,
        )
        fields: dict[FieldT, EncodableT] = {
            "id": batch.id,
            "tenant": tenant,
            "status": VALIDATING,
            "created_at": batch.created_at,
            "base_url": base_url,
            "source": source,
            "total": total,
            "unfinished": 0,
        }
        if webhook:
            fields["webhook"] = webhook

        def fill(pipe: Pipeline) -> None:
            pipe.hset(keys.batch_record(batch.id), mapping=fields)
            pipe.expire(keys.batch_record(batch.id), self.ttl_s)
            pipe.zadd(keys.tenant_batches(tenant), {batch.id: 0})

        create_new(self.redis, [keys.batch_record(batch.id), keys.batch_items(batch.id)], fill)
        return batch

    def add_items_to_pipeline(
        self, pipe: Pipeline, batch_id: str, entries: Sequence[str], queued: int, refused: int
    ) -> None:
        """Append item entries (prediction ids and ``invalid_entry``s), ``queued`` of them new queued
        predictions, in the caller's transaction (the one storing their records). The intake does this in
        its chunk script (``store_batch_chunk.lua``); tests use this to list items without queueing them."""
        if entries:
            pipe.rpush(keys.batch_items(batch_id), *entries)
            pipe.expire(keys.batch_items(batch_id), self.ttl_s)
        record = keys.batch_record(batch_id)
        if queued:
            pipe.hincrby(record, f"n:{Status.STARTING.value}", queued)
            pipe.hincrby(record, "unfinished", queued)
        if refused:
            pipe.hincrby(record, "refused", refused)

    def seal(self, batch_id: str) -> bool:
        """Validation is over: the batch is queued (and ends now if nothing is left to run)."""
        return bool(self._seal(keys=[keys.batch_record(batch_id)], args=[batch_id]))

    def discard(self, batch: Batch) -> None:
        """Forget a batch refused whole (over a queue cap) before any item was stored."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.batch_record(batch.id), keys.batch_items(batch.id))
            pipe.zrem(keys.tenant_batches(batch.tenant), batch.id)
            pipe.execute()

    def get(self, batch_id: str) -> Batch | None:
        fields = self.redis.hgetall(keys.batch_record(batch_id))
        return Batch.from_hash(fields) if is_record(fields) else None

    def _set(self, batch_id: str, field: str, value: int) -> bool:
        """``field`` set on the batch's record, if it still exists (never a record brought back)."""
        return bool(self._set_fields(keys=[keys.batch_record(batch_id)], args=[field, value]))

    def flag_cancel(self, batch_id: str) -> bool:
        """Remember that the batch was canceled: it ends ``canceled`` rather than ``completed``. False when
        the batch is gone (its record expired since it was read)."""
        return self._set(batch_id, "cancel_requested", 1)

    def keep_inputs_for(self, batch_id: str, retention_s: int) -> None:
        """The batch's shared inputs are kept ``retention_s`` after it ends (``Batch.retention_s``)."""
        self._set(batch_id, "retention_s", retention_s)

    def cancel_requested(self, batch_id: str) -> bool:
        return bool(self.redis.hexists(keys.batch_record(batch_id), "cancel_requested"))

    def cut_short(self, batch_id: str) -> None:
        """A batch canceled (or failed) before all its items were stored: its ``total`` becomes the
        items it took in, so its counts add up."""
        self._set(batch_id, "total", self.item_count(batch_id))

    def list_for_tenant(
        self, tenant: str, *, before: str | None = None, after: str | None = None, limit: int = 100
    ) -> tuple[list[Batch], bool]:
        """Newest first, as ``PredictionStore.list_for_tenant``; batches that expired are dropped."""
        index = keys.tenant_batches(tenant)
        names, more = newest_first_page(self.redis, index, before=before, after=after, limit=limit)
        with self.redis.pipeline(transaction=False) as pipe:
            for batch_id in names:
                pipe.hgetall(keys.batch_record(batch_id))
            found = pipe.execute()
        gone = [batch_id for batch_id, fields in zip(names, found, strict=True) if not is_record(fields)]
        if gone:
            self.redis.zrem(index, *gone)
        return [Batch.from_hash(fields) for fields in found if is_record(fields)], more

    def items(self, batch_id: str, start: int, count: int) -> list[str | RefusedItem]:
        """Entries ``start`` .. ``start + count - 1`` of the batch, in submission order."""
        return [parse_entry(e) for e in self.redis.lrange(keys.batch_items(batch_id), start, start + count - 1)]

    def iter_items(self, batch_id: str, page: int = 1000) -> Iterator[list[str | RefusedItem]]:
        """Every entry, a page at a time (the list may grow while a batch is still validating)."""
        start = 0
        while entries := self.items(batch_id, start, page):
            yield entries
            start += len(entries)

    def item_count(self, batch_id: str) -> int:
        return int(self.redis.llen(keys.batch_items(batch_id)))

    def expire(self, batch_id: str) -> None:
        """Record expiry, ``KILN_RECORD_RETENTION_S`` after the batch ended: its record, item list and shared
        copies, its tenant's list entry, and its webhook message with its attempts (out of the due set and
        its tenant's failed ones). GET answers 404. Its items' records expire on their own, each due no
        later (each ended before it)."""
        fields = self.redis.hmget(keys.batch_record(batch_id), ["tenant", keys.BATCH_SHARED_GROUPS])
        tenant, groups = (as_text(value) if value is not None else None for value in fields)
        message = batch_delivery_id(batch_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                keys.batch_record(batch_id),
                keys.batch_items(batch_id),
                *(keys.batch_shared_fields(batch_id, group) for group in range(int(groups or 0))),
                keys.webhook_delivery(message),
                keys.webhook_delivery_attempts(message),
            )
            pipe.zrem(keys.webhook_due(), message)
            if tenant is not None:
                pipe.zrem(keys.tenant_batches(tenant), batch_id)
                pipe.zrem(keys.tenant_failed_webhooks(tenant), message)
            pipe.execute()

    def claim_finished(self, limit: int = 100) -> list[str]:
        replies = self._claim_finished(keys=[keys.batches_finished()], args=[time.time(), SETTLE_LEASE_S, limit])
        return [as_text(i) for i in replies]

    def forget_finished(self, batch_id: str) -> None:
        self.redis.zrem(keys.batches_finished(), batch_id)


def batch_delivery_id(batch_id: str) -> str:
    """The one ``completed`` webhook delivery of a batch (stable, so it is recorded once)."""
    return f"msg_batch_{batch_id}"


__all__ = [
    "BATCH_TTL_S",
    "CANCELED",
    "COMPLETED",
    "QUEUED",
    "RUNNING",
    "VALIDATING",
    "Batch",
    "BatchStore",
    "RefusedItem",
    "batch_delivery_id",
    "invalid_entry",
    "render_batch",
]
