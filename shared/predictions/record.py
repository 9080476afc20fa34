"""The prediction record as stored in Redis (the source of truth for status)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, Field, field_serializer

from shared.predictions.status import Status
from shared.scheduling.queues import Priority


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z``, as Replicate writes timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    """26 lowercase characters that sort by creation time (a ULID), so ids double as list cursors."""
    return _encode_ulid(_IDS.reserve(1))


def new_ids(count: int) -> list[str]:
    """``count`` ids like ``new_id``'s, sorting in the order returned, made cheaply for a batch: one
    range of ULIDs reserved at once, the ids counting up through it."""
    found: list[str] = []
    number = _IDS.reserve(count)
    end = number + count
    while number < end:  # a block of 1,024 shares all but its last two characters
        block, low = divmod(number, 1024)
        head = _encode_ulid(block << 10)[:-2]
        taken = min(end - number, 1024 - low)
        found += [head + pair for pair in _PAIRS[low : low + taken]]
        number += taken
    return found


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


# A ULID is a 128-bit number: 48 bits of milliseconds, then 80 of randomness.
_RANDOM_BITS = 80
# A fresh start is drawn in the lower half of the random part, so counting on from it never runs out.
_FRESH_BITS = _RANDOM_BITS - 1


class IdRanges:
    """Hands out ranges of ULIDs, each made of its millisecond and a random start drawn for it.

    Every range starts past the last one this process handed out: within a millisecond (or when the
    clock steps back) it counts on from there, so ids sort in the order they were made, and two calls
    never share one. Another process, thread-free or on another machine, draws its own start: two
    ranges made in one millisecond meet only if 79 random bits land within the ranges' lengths. A
    forked child starts afresh rather than counting on from its parent's last id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 0

    def reserve(self, count: int) -> int:
        """The first of ``count`` consecutive ULIDs no other call of this process gets."""
        fresh = (_now_ms() << _RANDOM_BITS) | secrets.randbits(_FRESH_BITS)
        with self._lock:
            start = max(fresh, self._next)
            self._next = start + count
        return start

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._next = 0


_IDS = IdRanges()
os.register_at_fork(after_in_child=_IDS.forget)

# Crockford's base32, as ULIDs are written (lowercase); in ASCII order, so encoded numbers sort as numbers.
_BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _BASE32.encode())
# Every value of 10 bits as two characters, in order.
_PAIRS = [high + low for high in _BASE32 for low in _BASE32]


def _encode_ulid(number: int) -> str:
    """The 26 characters of a 128-bit ULID: its 130-bit form (two leading zero bits) at the top of
    17 bytes, base32-encoded by the standard library and mapped to Crockford's alphabet."""
    return base64.b32encode((number << 6).to_bytes(17, "big")).translate(_FROM_RFC4648)[:26].decode()


# Left out of ``Prediction.to_compact_hash``'s dump: the logs (a key of their own), and the fields with a default
# factory, written apart.
_DUMPED_APART = {"logs", "id", "created_at"}


class Prediction(BaseModel):
    id: str = Field(default_factory=new_id)
    tenant: str
    model: str
    version: str
    # The Celery queue (model family) it runs on; the queued-depth counters are kept per family.
    queue: str = ""
    input: dict[str, Any]
    # Remote image inputs fetched at submission: URL -> storage key, so workers never refetch them.
    input_files: dict[str, str] = {}
    # Names of output files under the prediction's storage prefix, in order.
    output: list[str] | None = None
    logs: str = ""
    error: str | None = None
    status: Status = Status.STARTING
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    predict_time: float | None = None
    # The deployment ("owner/name") it was created through, if any.
    deployment: str | None = None
    # Cancel-After: stopped (aborted before it starts, canceled while it runs) if not finished by then.
    deadline: datetime | None = None
    data_removed: bool = False
    # Seconds its data is kept after it ends (``retention_s`` in the create body); None: KILN_RETENTION_S.
    retention_s: int | None = None
    source: str = "api"
    cancel_requested: bool = False
    # How many times a worker started it (reruns after a worker died count up).
    attempt: int = 0
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    # The API base URL the prediction was created through; webhook bodies link to it.
    base_url: str = ""
    # The batch (``shared.batches.records``) this prediction is an item of: its status changes move the batch's counts.
    batch_id: str | None = None
    # "low": it starts only when no normal prediction of its model family waits (docs/scheduling.md).
    priority: Priority = "normal"
    # Where it waits (``shared.scheduling.queue_lines``): its family queue's line (a priority step) and its
    # ticket there, written by the script that queues it; they give its ``queue_position``.
    queue_line: int | None = None
    queue_ticket: int | None = None

    def wants_event(self, event: str) -> bool:
        """Whether this prediction's webhook subscribed to ``event`` (all events when no filter was given)."""
        return self.webhook is not None and (self.webhook_events_filter is None or event in self.webhook_events_filter)

    @field_serializer("created_at", "started_at", "completed_at", "deadline")
    def _timestamps(self, moment: datetime | None) -> str | None:
        return format_timestamp(moment)

    @property
    def total_time(self) -> float | None:
        if self.completed_at is None:
            return None
        return (self.completed_at - self.created_at).total_seconds()

    def to_compact_hash(self) -> dict[str, bytes]:
        """The record as Redis stores it: each field JSON-encoded (orjson: a create's large data-URI inputs
        cost the stdlib encoder most of a batch's time), except those that hold their defaults (readers
        take an absent field as its default: a queued prediction costs fewer bytes of Redis); ``status`` is
        always written, the scripts read it. Logs live in their own key so appends stay O(1)."""
        # ``exclude_defaults`` calls a field's default factory to compare with it (a new ULID and a clock read
        # per record, most of the dump's time): the two fields that have one are never at their default anyway.
        fields = self.model_dump(mode="json", exclude=_DUMPED_APART, exclude_defaults=True)
        fields["id"], fields["created_at"] = self.id, format_timestamp(self.created_at)
        fields["status"] = self.status.value
        return {
            name: orjson.dumps(value)
            for name, value in fields.items()
            if value is not None or Prediction.model_fields[name].default is not None
        }

    @classmethod
    def from_redis_hash(cls, fields: dict[str, str], logs: str) -> Prediction:
        return cls.model_validate({name: json.loads(value) for name, value in fields.items()} | {"logs": logs})
