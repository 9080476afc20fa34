"""Webhook events and signing (Standard Webhooks)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from standardwebhooks.webhooks import Webhook

EVENTS = ("start", "output", "logs", "completed")
# Events sent at most once per throttle window per prediction; the others are always sent.
THROTTLED_EVENTS = frozenset({"output", "logs"})


def signature_headers(secrets: Sequence[str], msg_id: str, timestamp: datetime, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` for one delivery attempt: one
    ``v1,<signature>`` per secret, separated by spaces (during a rotation, the new and the old)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets),
    }
