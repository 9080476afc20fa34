"""Request bodies of the HTTP API (model inputs are validated separately, per model)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from api.errors import reject_invalid_text
from shared.scheduling.queues import Priority

PRIORITY_DESCRIPTION = (
    "Kiln extension: `low` starts only when no `normal` prediction of the same model family waits "
    "(tenants still take turns); default `normal`. Wins over the `Kiln-Priority` header."
)

WebhookEvent = Literal["start", "output", "logs", "completed"]
# What ``version`` may be: a version id (64 hex digits), ``owner/name`` or ``owner/name:<id>``.
VERSION_REFERENCE = r"^([0-9a-f]{64}|[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*(:[0-9a-f]{64})?)$"


class PredictionFields(BaseModel):
    """What every create body carries besides the model reference."""

    # Replicate's clients send extra keys (e.g. ``stream``); ignore what we don't use.
    model_config = ConfigDict(extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        """Text that is not valid Unicode, anywhere in the body (ignored keys too), is a 422 naming
        where it is, before anything reads it."""
        reject_invalid_text(data)
        return data

    input: dict[str, Any] = Field(description="The model's inputs, validated against its schema.")
    webhook: HttpUrl | None = None
    webhook_events_filter: list[WebhookEvent] | None = None
    # Kiln extension: its own retention, at most KILN_RETENTION_S (checked by ``api.intake.submission.prepare``).
    retention_s: int | None = Field(
        default=None,
        ge=0,
        strict=True,
        description="Kiln extension: seconds its input, output and logs are kept after it ends, at most "
        "KILN_RETENTION_S (the default). 0: deleted once it has ended and its completed webhook (if any) "
        "was attempted.",
    )
    # Replicate's legacy field: a URL called once, when the prediction completes.
    webhook_completed: HttpUrl | None = Field(
        default=None, description='Legacy: the same as `webhook` with `webhook_events_filter: ["completed"]`.'
    )
    priority: Priority | None = Field(default=None, description=PRIORITY_DESCRIPTION)

    @model_validator(mode="after")
    def _legacy_webhook_completed(self) -> PredictionFields:
        """``webhook_completed`` as Replicate handles it: the completed event goes to that URL. Kiln sends
        a prediction's events to one URL, so another ``webhook`` beside it is a 422, never dropped."""
        if self.webhook_completed is None:
            return self
        if self.webhook is None:
            self.webhook = self.webhook_completed
            self.webhook_events_filter = ["completed"]
        elif self.webhook != self.webhook_completed:
            raise ValueError(
                "webhook_completed: Kiln sends a prediction's events to one URL; give webhook (with "
                "webhook_events_filter) or webhook_completed, not two different URLs"
            )
        return self


class CreatePrediction(PredictionFields):
    version: str = Field(
        pattern=VERSION_REFERENCE, description="A version id, 'owner/name' or 'owner/name:version_id'."
    )


class CreateInBatch(PredictionFields):
    """One create of a batch create (``CreateBatch.predictions``): names its model by ``version`` or
    by ``model`` (``owner/name``)."""

    version: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)


class _RawItems(BaseModel):
    """A body whose ``predictions`` stay raw, validated one by one, so one bad item fails only itself."""

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        """Invalid Unicode outside the items is a 422 for the batch; in an item, a problem for that item."""
        if isinstance(data, dict):
            reject_invalid_text({key: value for key, value in data.items() if key != "predictions"})
        return data


BATCH_PRIORITY_DESCRIPTION = (
    "Kiln extension: the priority of the items that name none (`normal` or `low`); wins over the "
    "`Kiln-Priority` header."
)


class CreateBatch(_RawItems):
    predictions: list[dict[str, Any]] = Field(description="Create bodies: version or model, input, webhook...")
    priority: Priority | None = Field(default=None, description=BATCH_PRIORITY_DESCRIPTION)


class CreateBatchObject(_RawItems):
    """``POST /v1/batches``: inline create bodies or an uploaded JSONL file, and the batch's webhook."""

    predictions: list[Any] | None = Field(
        default=None, description="Create bodies: version or model, input, webhook..."
    )
    input_file: str | None = Field(
        default=None, min_length=1, description="urls.get of an uploaded JSONL file: one create body per line."
    )
    webhook: HttpUrl | None = Field(default=None, description="Called once, with the batch, when every item has ended.")
    priority: Priority | None = Field(default=None, description=BATCH_PRIORITY_DESCRIPTION)


class RetryDeliveries(BaseModel):
    """``POST /v1/webhooks/deliveries/retry``: which failed webhook messages to send again."""

    state: Literal["failed"] = Field(default="failed", description="The messages' state: failed.")
    since: str | None = Field(default=None, max_length=64, description="ISO 8601: those that failed at or after it.")
    until: str | None = Field(default=None, max_length=64, description="ISO 8601: those that failed before it.")
