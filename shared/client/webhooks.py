"""``kiln webhooks failed|retry``: the caller's webhook deliveries that failed, and sending them again.

The API's side: ``GET /v1/webhooks/deliveries?state=failed[&since=]`` (pages of
``{"results": [...], "next": url}``), ``POST /v1/webhooks/deliveries/{webhook_id}/retry`` and
``POST /v1/webhooks/deliveries/retry`` with a filter body ``{"state": "failed", "since": ...}``.
"""

from __future__ import annotations

import json
from typing import Any

from shared.client.errors import EXIT_OK, UsageError
from shared.client.http import KilnClient
from shared.client.inputs import parse_since

FAILED = "failed"
# Columns of the plain listing: the first key of each group that a delivery has.
COLUMNS: tuple[tuple[str, ...], ...] = (
    ("webhook_id", "id"),
    ("created_at",),
    ("event",),
    ("prediction_id", "subject_id"),
    ("attempts",),
    ("last_outcome", "error"),
    ("url",),
)


def list_failed(client: KilnClient, since: str | None, as_json: bool) -> int:
    """Each failed delivery on a line: tab-separated columns (or the delivery as JSON)."""
    for delivery in client.deliveries(FAILED, parse_since(since) if since else None):
        print(json.dumps(delivery) if as_json else "\t".join(_column(delivery, keys) for keys in COLUMNS))
    return EXIT_OK


def _column(delivery: dict[str, Any], keys: tuple[str, ...]) -> str:
    value = next((delivery[key] for key in keys if delivery.get(key) is not None), "-")
    return str(value).replace("\t", " ").replace("\n", " ")


def retry(client: KilnClient, webhook_id: str | None, all_failed: bool, since: str | None) -> int:
    """Send one delivery again, or every failed one (since ``since``); print what the API answered."""
    if (webhook_id is None) == (not all_failed):
        raise UsageError("webhooks retry: give a WEBHOOK_ID or --all-failed (not both)")
    if since and not all_failed:
        raise UsageError("webhooks retry: --since goes with --all-failed")
    if webhook_id is not None:
        answer = client.retry_delivery(webhook_id)
    else:
        answer = client.retry_deliveries(FAILED, parse_since(since) if since else None)
    print(json.dumps(answer))
    return EXIT_OK
