"""The prediction record as stored in Redis (the source of truth for status)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, Field, field_serializer
from ulid import ULID

from shared.status import Status

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z``, as Replicate writes timestamps."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    """26 lowercase characters that sort by creation time (a ULID), so ids double as list cursors."""
    return str(ULID()).lower()


# Crockford's base32, as ULIDs are written (lowercase); in ASCII order, so encoded numbers sort as numbers.
_BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"
# ``new_ids`` counts up in a ULID's last 8 characters (40 of its 80 random bits).
_COUNTED_CHARS = 8


def new_ids(count: int) -> list[str]:
    """``count`` ids like ``new_id``'s, sorting in the order returned, made cheaply for a batch: one
    ULID's time and randomness, its last characters counting up from their random start."""
    while True:
        first = new_id()
        start = int("".join(f"{_BASE32.index(c):05b}" for c in first[-_COUNTED_CHARS:]), 2)
        if start + count < 32**_COUNTED_CHARS:
            break
    prefix, found, number, end = first[:-_COUNTED_CHARS], [], start, start + count
    while number < end:  # a block of 1,024 shares all but its last two characters
        block, low = divmod(number, 1024)
        head = prefix + _encode_base32(block, _COUNTED_CHARS - 2)
        taken = min(end - number, 1024 - low)
        found += [head + pair for pair in _PAIRS[low : low + taken]]
        number += taken
    return found


def _encode_base32(number: int, width: int) -> str:
    return "".join(_BASE32[(number >> shift) & 31] for shift in range(5 * (width - 1), -1, -5))


_PAIRS = [_encode_base32(number, 2) for number in range(1024)]


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
    source: str = "api"
    cancel_requested: bool = False
    # How many times a worker started it (reruns after a worker died count up).
    attempt: int = 0
    webhook: str | None = None
    webhook_events_filter: list[str] | None = None
    # The API base URL the prediction was created through; webhook bodies link to it.
    base_url: str = ""
    # The batch (``shared.batches``) this prediction is an item of: its status changes move the batch's counts.
    batch_id: str | None = None

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

    def to_redis_hash(self) -> dict[FieldT, EncodableT]:
        """Every field JSON-encoded (orjson: a create's large data-URI inputs cost the stdlib encoder
        most of a batch's time); logs live in their own key so appends stay O(1)."""
        return {name: orjson.dumps(value) for name, value in self.model_dump(mode="json", exclude={"logs"}).items()}

    def to_compact_hash(self) -> dict[str, bytes]:
        """``to_redis_hash`` without the fields that hold their defaults (a batch item's record: a
        queued item costs fewer bytes of Redis); ``status`` is always written, the scripts read it."""
        fields = self.model_dump(mode="json", exclude={"logs"}, exclude_defaults=True)
        fields["status"] = self.status.value
        return {
            name: orjson.dumps(value)
            for name, value in fields.items()
            if value is not None or Prediction.model_fields[name].default is not None
        }

    @classmethod
    def from_redis_hash(cls, fields: dict[str, str], logs: str) -> Prediction:
        return cls.model_validate({name: json.loads(value) for name, value in fields.items()} | {"logs": logs})
