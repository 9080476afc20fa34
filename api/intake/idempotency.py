"""``Idempotency-Key`` on create: the same key and body from the same token return the first prediction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redis import Redis

from api.errors import ProblemError
from shared.db import keys

TTL_S = 24 * 3600
# How long a duplicate request waits for the first one's result before a 409 asking it to retry.
DUPLICATE_WAIT_S = 10.0

T = TypeVar("T")


def fingerprint(target: str, body: dict[str, Any]) -> str:
    """What makes two requests the same: where they were sent and their body, canonically."""
    return hashlib.sha256(json.dumps({"target": target, "body": body}, sort_keys=True).encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def claim(self, tenant: str, key: str, request_fingerprint: str, prediction_id: str) -> str | None:
        """Bind ``key`` to ``prediction_id`` if unused (atomically, so concurrent duplicates agree).

        Returns None when this request owns the key, else the id of the prediction the key already
        names. Raises 409 when the key was used with a different request.
        """
        if not key or len(key) > 255:
            raise ProblemError(400, "Idempotency-Key must be 1 to 255 characters")
        name = keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())
        value = json.dumps({"fingerprint": request_fingerprint, "prediction_id": prediction_id})
        if self.redis.set(name, value, nx=True, ex=TTL_S):
            return None
        existing: dict[str, str] = json.loads(self.redis.get(name) or value)
        if existing["fingerprint"] != request_fingerprint:
            raise ProblemError(409, "Idempotency-Key was already used with a different request body")
        return existing["prediction_id"]

    def release(self, tenant: str, key: str) -> None:
        """Forget a key whose request failed before anything was stored, so a retry can use it."""
        self.redis.delete(keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest()))

    @contextmanager
    def released_on_failure(self, tenant: str, key: str | None) -> Iterator[None]:
        """The block stores what ``key`` (if any) was claimed for; should it fail, ``release`` the key."""
        try:
            yield
        except BaseException:
            if key is not None:
                self.release(tenant, key)
            raise


def await_first_request(load: Callable[[], T | None], what: str) -> T:
    """What the first request with a key stored (``load`` returns it, or None while it is still being
    processed), waited for up to ``DUPLICATE_WAIT_S``; then 409 naming ``what`` with a Retry-After."""
    deadline = time.monotonic() + DUPLICATE_WAIT_S
    while (stored := load()) is None:
        if time.monotonic() > deadline:
            raise ProblemError(
                409,
                f"{what} with this Idempotency-Key is still being processed; retry shortly",
                headers={"Retry-After": "1"},
            )
        time.sleep(0.02)
    return stored
