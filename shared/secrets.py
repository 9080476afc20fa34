"""Server-side secrets: configured in settings, or generated once and shared through Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable

from redis import Redis

from shared import keys
from shared.redis_client import as_text
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


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_secret(settings: Settings, redis: Redis) -> str:
    """The Standard Webhooks signing secret (``whsec_<base64>``)."""
    return configured_or_shared(redis, "webhook", settings.webhook_secret, new_webhook_secret)


def url_signing_secret(settings: Settings, redis: Redis) -> str:
    """The key that signs output URLs so clients without our Authorization header can fetch them."""
    return configured_or_shared(redis, "url-signing", settings.url_signing_secret, lambda: secrets.token_hex(32))


def sign_path(secret: str, path: str) -> str:
    """A URL-safe HMAC of ``path``: the capability to GET it without a token."""
    digest = hmac.new(secret.encode(), path.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:24]).decode()


def verify_path(secret: str, path: str, signature: str) -> bool:
    return hmac.compare_digest(sign_path(secret, path), signature)
