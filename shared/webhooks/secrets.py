"""Each tenant's webhook signing secret, and its rotation.

Every tenant (API token) signs its deliveries with a secret of its own, so no tenant can sign an
event another tenant's receiver accepts. Rotating makes a new secret current and keeps the old one
for ``KILN_WEBHOOK_SECRET_OVERLAP_S``: meanwhile each delivery carries both signatures (Standard
Webhooks allows several in ``webhook-signature``), so a receiver can switch secrets without
rejecting a single event.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis

from shared.db import keys, lua
from shared.db.client import as_text


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass(frozen=True)
class TenantSecret:
    current: str
    # The secret before the last rotation, and until when (unix seconds) deliveries still carry it.
    previous: str | None = None
    previous_until: float | None = None

    def previous_active(self, now: float | None = None) -> bool:
        return (
            self.previous is not None
            and self.previous_until is not None
            and (time.time() if now is None else now) < self.previous_until
        )

    def signing_keys(self, now: float | None = None) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous during the overlap."""
        return [self.current] + ([self.previous] if self.previous and self.previous_active(now) else [])

    @classmethod
    def from_hash(cls, fields: Mapping[Any, Any]) -> TenantSecret:
        """From the Redis hash (bytes keys and values)."""
        text = {as_text(key): as_text(value) for key, value in fields.items()}
        until = text.get("previous_until")
        return cls(
            current=text["current"],
            previous=text.get("previous") or None,
            previous_until=float(until) if until else None,
        )


class WebhookSecrets:
    """The tenants' signing secrets in Redis (``keys.webhook_secret``), made on first use."""

    def __init__(self, redis: Redis, overlap_s: float) -> None:
        self.redis = redis
        self.overlap_s = overlap_s
        self._rotate = lua.register(redis, "webhook_secrets_rotate")

    def get(self, tenant: str) -> TenantSecret:
        key = keys.webhook_secret(tenant)
        fields: Mapping[Any, Any] = self.redis.hgetall(key)
        if b"current" not in fields:
            # Two processes asking at once agree on whichever secret was stored first.
            self.redis.hsetnx(key, "current", new_webhook_secret())
            fields = self.redis.hgetall(key)
        return TenantSecret.from_hash(fields)

    def rotate(self, tenant: str) -> TenantSecret:
        """A new current secret; the old one keeps signing for ``overlap_s``."""
        reply = self._rotate(
            keys=[keys.webhook_secret(tenant)], args=[new_webhook_secret(), repr(time.time() + self.overlap_s)]
        )
        return TenantSecret.from_hash(dict(zip(reply[::2], reply[1::2], strict=True)))

    def signing_keys(self, tenant: str) -> list[str]:
        return self.get(tenant).signing_keys()
