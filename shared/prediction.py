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

    @classmethod
    def from_redis_hash(cls, fields: dict[str, str], logs: str) -> Prediction:
        return cls.model_validate({name: json.loads(value) for name, value in fields.items()} | {"logs": logs})
