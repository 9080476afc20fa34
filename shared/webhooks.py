"""Webhook events and signing (Standard Webhooks)."""

from __future__ import annotations

from datetime import datetime

from standardwebhooks.webhooks import Webhook

EVENTS = ("start", "output", "logs", "completed")
# Events sent at most once per throttle window per prediction; the others are always sent.
THROTTLED_EVENTS = frozenset({"output", "logs"})


def signature_headers(secret: str, msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, timestamp, body),
    }
