"""Retention, as Replicate does it, and record expiry: nothing a prediction leaves in Redis or S3
outlives them.

- ``prediction:<id>``, due ``KILN_RETENTION_S`` after it finished (or its own ``retention_s``:
  ``data_kept_s``): every stored object of the prediction (inputs, outputs) is deleted, and input,
  output and logs are cleared from the record, which then shows ``data_removed: true``; id, status,
  model, timestamps, metrics and error stay. ``DELETE /v1/predictions/{id}`` does the same at once
  (``DataRemoval``).
- ``record:<id>``, due ``KILN_RECORD_RETENTION_S`` after it finished: the record, its logs, its
  webhook state (every delivery with its attempts, and their index) and its entry in the tenant's
  list are deleted; GET answers 404.
- ``file:<id>[:<tenant>]``, due when an uploaded file expires: its bytes and its list entry.
- ``batch:<id>``, due ``KILN_RETENTION_S`` after a batch object's last item ended (with its items'
  own retention: ``shared.batches.settler``), or after its items were given their time to finish
  (``shared.batches.records.BATCH_TTL_S``) should it never end: the image inputs its items share
  (``api.intake.image_staging``), stored once for the batch; the batch then shows ``data_removed``.
- ``batch_record:<id>``, due ``KILN_RECORD_RETENTION_S`` after a batch object ended: the batch's record, its
  item list, the fields its items share, its webhook message and its tenant's list entry
  (``BatchStore.expire``); GET answers 404. A batch that never ends expires with its keys' TTL.

All five wait in one sorted set (``keys.retention``), scored by when they are due. The janitor
(``Janitor.sweep``, a maintenance job of every worker process) takes what is due in bounded
batches and exports how far behind it is (``kiln_janitor_lag_seconds``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from redis import Redis

from shared.batches.records import BatchStore
from shared.db import keys, lua
from shared.db.client import range_members
from shared.runtime import metrics
from shared.storage.objects import batch_prefix, file_key, prediction_prefix

if TYPE_CHECKING:
    from shared.storage.s3 import Storage

log = logging.getLogger(__name__)

# Items per batch, and batches per sweep: a sweep holds Redis and S3 for a bounded while.
BATCH = 200
MAX_BATCHES = 25

# The webhook events whose per-prediction state (``keys.webhook_*``) a record takes with it.
_WEBHOOK_EVENTS = ("start", "output", "logs", "completed")

# How long a claimed item is left to the janitor that claimed it.
CLAIM_S = 300

# A prediction created with ``retention_s: 0`` keeps its data until its ``completed`` webhook was
# attempted (so the receiver can fetch the outputs it names), then loses it at once
# (``completed_webhook_attempted``). Should that attempt never come (the webhook workers down, the
# delivery stuck), the data goes this long after the prediction ended all the same, or after
# KILN_RETENTION_S when that is shorter.
ZERO_RETENTION_WEBHOOK_WAIT_S = 600

# S3 prefixes deleted at a time when many predictions' data goes at once (a batch's DELETE).
REMOVAL_THREADS = 8


def schedule(redis: Redis, kind: str, item_id: str, due: float) -> None:
    """Remember to remove ``kind`` (``prediction``, ``record``, ``file``, ``batch``) of ``item_id`` at ``due``
    (unix seconds)."""
    schedule_many(redis, [(kind, item_id, due)])


def schedule_many(redis: Redis, items: Sequence[tuple[str, str, float]]) -> None:
    """``schedule`` for each (kind, item id, due), in one command."""
    if items:
        redis.zadd(keys.retention(), {f"{kind}:{item_id}": due for kind, item_id, due in items})


def data_kept_s(default_s: float, own_s: int | None, awaits_completed_webhook: bool) -> float:
    """How long after it ended a prediction's data is kept: its own ``retention_s`` (never beyond
    ``default_s``, KILN_RETENTION_S), else ``default_s``. Kept 0 s, it waits for its ``completed``
    webhook's first attempt when it has one (at most ``ZERO_RETENTION_WEBHOOK_WAIT_S``)."""
    if own_s is None:
        return default_s
    if own_s == 0 and awaits_completed_webhook:
        return min(default_s, ZERO_RETENTION_WEBHOOK_WAIT_S)
    return min(float(own_s), default_s)


def bring_forward(redis: Redis, kind: str, item_id: str, due: float) -> None:
    """Make an item already scheduled due at ``due`` if that is sooner; nothing when it is not
    scheduled (removed already, or never)."""
    redis.zadd(keys.retention(), {f"{kind}:{item_id}": due}, xx=True, lt=True)


def prediction_keys(prediction_id: str) -> list[str]:
    """Every Redis key of a prediction that goes with its record (its tenant's list entry aside)."""
    return [
        keys.prediction(prediction_id),
        keys.prediction_logs(prediction_id),
        keys.webhook_completed(prediction_id),
        keys.webhook_progress_sending(prediction_id),
        *(keys.webhook_latest_delivery(prediction_id, event) for event in _WEBHOOK_EVENTS),
        *(keys.webhook_throttle(prediction_id, event) for event in _WEBHOOK_EVENTS),
        keys.webhook_deliveries(prediction_id),
    ]


class DataRemoval:
    """Deletes predictions' data now: every stored object under each one's prefix (inputs the API
    staged, outputs, copies of uploaded files), then input, output and logs cleared from its record,
    which shows ``data_removed: true``. The janitor does it at retention, ``DELETE`` on demand; doing
    it twice changes nothing. A batch's shared inputs are the batch's (``remove_batch_inputs``)."""

    def __init__(self, redis: Redis, storage: Storage, threads: int = REMOVAL_THREADS) -> None:
        self.redis = redis
        self.storage = storage
        self.threads = threads
        self._remove_data = lua.register(redis, "retention_remove_data")
        self._replace_body = lua.register(redis, "webhook_body_replace")
        self._batch_removed = lua.register(redis, "retention_batch_removed")

    def remove(self, prediction_ids: Sequence[str]) -> None:
        """S3 first: a record that says ``data_removed`` has no object left behind it."""
        prefixes = [prediction_prefix(i) for i in prediction_ids]
        if len(prefixes) > 1:
            with ThreadPoolExecutor(min(self.threads, len(prefixes))) as pool:
                list(pool.map(self.storage.delete_prefix, prefixes))
        else:
            for prefix in prefixes:
                self.storage.delete_prefix(prefix)
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                record = [keys.prediction(prediction_id), keys.prediction_logs(prediction_id)]
                self._remove_data(keys=record, client=pipe)
            pipe.execute()
        self.scrub_pending_webhooks(prediction_ids)

    def scrub_pending_webhooks(self, prediction_ids: Sequence[str]) -> None:
        """The bodies of the predictions' webhook deliveries still to be sent (a ``completed`` one being
        retried, say), cleared as their records were: no later attempt carries what was removed."""
        with self.redis.pipeline(transaction=False) as pipe:
            for prediction_id in prediction_ids:
                pipe.zrange(keys.webhook_deliveries(prediction_id), 0, -1)
            delivery_ids = [i for members in pipe.execute() for i in range_members(members)]
        if not delivery_ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hget(keys.webhook_delivery(delivery_id), "body")
            stored = pipe.execute()
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id, raw in zip(delivery_ids, stored, strict=True):
                body = json.loads(raw) if raw else ""  # a delivery's fields are JSON; a finished one keeps ""
                if body:
                    replaced = json.dumps(data_removed_body(body))
                    self._replace_body(keys=[keys.webhook_delivery(delivery_id)], args=[raw, replaced], client=pipe)
            pipe.execute()

    def remove_batch_inputs(self, batch_id: str) -> None:
        """The image inputs a batch's items share (stored once for the batch), the input its identical items
        share (``keys.batch_shared_fields``: each item's record shows ``{}`` once its data is removed, but
        the one copy stayed with the batch), and the batch, while its record lasts, marked
        ``data_removed``. Runs once every item's data is due (at the batch's retention, or on ``DELETE``)."""
        self.storage.delete_prefix(batch_prefix(batch_id))
        groups = int(self.redis.hget(keys.batch_record(batch_id), keys.BATCH_SHARED_GROUPS) or 0)
        with self.redis.pipeline(transaction=False) as pipe:
            for group in range(groups):
                pipe.hdel(keys.batch_shared_fields(batch_id, group), "input", "input_files")
            self._batch_removed(keys=[keys.batch_record(batch_id)], client=pipe)
            pipe.execute()


def data_removed_body(body: str) -> str:
    """A prediction's webhook body as its record shows it once its data is removed: input, output and logs
    cleared, ``data_removed`` true (a body that is no prediction's is kept)."""
    rendered = json.loads(body)
    if not isinstance(rendered, dict) or "input" not in rendered:
        return body
    cleared: dict[str, Any] = {"input": {}, "output": None, "logs": ""}
    rendered |= {name: value for name, value in cleared.items() if name in rendered} | {"data_removed": True}
    return json.dumps(rendered)


def delivery_keys(delivery_ids: Sequence[str]) -> list[str]:
    """Every Redis key of those webhook deliveries: each one's state and attempts."""
    return [key for i in delivery_ids for key in (keys.webhook_delivery(i), keys.webhook_delivery_attempts(i))]


class Janitor:
    def __init__(self, redis: Redis, storage: Storage, batch: int = BATCH, max_batches: int = MAX_BATCHES) -> None:
        self.redis = redis
        self.storage = storage
        self.batch = batch
        self.max_batches = max_batches
        self.removal = DataRemoval(redis, storage)
        self.batches = BatchStore(redis)
        self._claim = lua.register(redis, "retention_claim")

    def sweep(self) -> int:
        """Batches of due items until none is left or ``max_batches`` ran; then the lag metric.
        Returns how many items were done."""
        done = 0
        for _ in range(self.max_batches):
            count = self.run_once(self.batch)
            done += count
            if count < self.batch:
                break
        metrics.record_janitor_lag(self.lag_s())
        return done

    def lag_s(self, now: float | None = None) -> float:
        """How long the oldest due item has been waiting (0 when none is due)."""
        now = time.time() if now is None else now
        oldest = self.redis.zrangebyscore(keys.retention(), "-inf", now, start=0, num=1, withscores=True)
        return max(0.0, now - float(oldest[0][1])) if oldest else 0.0

    def run_once(self, limit: int = BATCH) -> int:
        """Do one batch of what is due; returns how many items were done."""
        now = time.time()
        due = self._claim(keys=[keys.retention()], args=[now, limit, now + CLAIM_S])
        for member in range_members(due):
            kind, _, rest = member.partition(":")
            if kind == "prediction":
                self.remove_data(rest)
            elif kind == "record":
                self.expire_record(rest)
            elif kind == "file":
                file_id, _, tenant = rest.partition(":")
                self.redis.delete(keys.file(file_id))  # the record first, as a DELETE does
                self.storage.delete(file_key(file_id))
                if tenant:
                    self.redis.zrem(keys.tenant_files(tenant), file_id)
            elif kind == "batch":
                self.removal.remove_batch_inputs(rest)
            elif kind == "batch_record":
                self.batches.expire(rest)
            # Removed only once done, so a failure is retried once its claim lapses.
            self.redis.zrem(keys.retention(), member)
            log.info("retention: removed %s %s", kind, rest)
        return len(due)

    def remove_data(self, prediction_id: str) -> None:
        """Retention: the prediction's stored objects deleted, its input, output and logs cleared."""
        self.removal.remove([prediction_id])

    def expire_record(self, prediction_id: str) -> None:
        """Record expiry: the record and every key that goes with it (its webhook deliveries too: out of
        the due set and its tenant's failed ones), its tenant's list entry and its deadline entry."""
        tenant = self.redis.hget(keys.prediction(prediction_id), "tenant")
        # Retention is due first; should it still be pending, the record must not outlive its data.
        if self.redis.zscore(keys.retention(), f"prediction:{prediction_id}") is not None:
            self.storage.delete_prefix(prediction_prefix(prediction_id))
        deliveries = range_members(self.redis.zrange(keys.webhook_deliveries(prediction_id), 0, -1))
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*prediction_keys(prediction_id), *delivery_keys(deliveries))
            pipe.zrem(keys.deadlines(), prediction_id)  # a finished one's Cancel-After may reach past its record
            if deliveries:
                pipe.zrem(keys.webhook_due(), *deliveries)
            if tenant is not None:
                pipe.zrem(keys.tenant_predictions(_tenant_of(tenant)), prediction_id)
                if deliveries:
                    pipe.zrem(keys.tenant_failed_webhooks(_tenant_of(tenant)), *deliveries)
            pipe.execute()


def _tenant_of(raw: bytes | str) -> str:
    """The tenant as the record stores it (a JSON string)."""
    tenant: str = json.loads(raw)
    return tenant
