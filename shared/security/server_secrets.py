"""Server-side secrets: configured in settings, or generated once and shared through Redis.

(Webhook signing secrets are per tenant: ``shared.webhooks.secrets``.)"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from redis import Redis

from shared.db import keys
from shared.db.client import as_text
from shared.settings import Settings


def configured_or_shared(redis: Redis, name: str, configured: str, generate: Callable[[], str]) -> str:
    """``configured`` if set; otherwise the value every process finds under ``name`` in Redis,
    created by whichever process asked first."""
    if configured:
        return configured
    redis.set(keys.secret(name), generate(), nx=True)
    value = redis.get(keys.secret(name))
    if value is None:
        raise RuntimeError(f"the shared {name} secret vanished from Redis as it was created (was Redis flushed?)")
    return as_text(value)


def url_signing_secret(settings: Settings, redis: Redis) -> str:
    """The key that signs URLs clients may use without our Authorization header (``shared.security.signed_urls``)."""
    return configured_or_shared(redis, "url-signing", settings.url_signing_secret, lambda: secrets.token_hex(32))
