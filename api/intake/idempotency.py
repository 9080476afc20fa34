"""``Idempotency-Key`` on create: the same key and body from the same token return the first prediction."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redis import Redis
from redis.exceptions import WatchError

from api.errors import ProblemError
from shared.db import keys

TTL_S = 24 * 3600
# A claim whose request stored nothing within this long was abandoned (its API process died, or a
# failover lost what it stored): the next request with the key takes it over instead of a 409 for a day.
STALE_CLAIM_S = 120.0
# How long a duplicate request waits for the first one's result before a 409 asking it to retry.
DUPLICATE_WAIT_S = 10.0

T = TypeVar("T")


def fingerprint(target: str, body: dict[str, Any]) -> str:
    """What makes two requests the same: where they were sent and their body, canonically."""
    return hashlib.sha256(json.dumps({"target": target, "body": body}, sort_keys=True).encode()).hexdigest()


class IdempotencyKeys:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def claim(
        self,
        tenant: str,
        key: str,
        request_fingerprint: str,
        prediction_id: str,
        is_stored: Callable[[str], bool] | None = None,
    ) -> str | None:
        """Bind ``key`` to ``prediction_id`` if unused (atomically, so concurrent duplicates agree).

        Returns None when this request owns the key, else the id of the prediction the key already
        names. Raises 409 when the key was used with a different request. With ``is_stored`` (whether
        what a claim names was stored), a claim older than ``STALE_CLAIM_S`` that stored nothing is taken
        over: its request died between claiming and storing.
        """
        if not key or len(key) > 255:
            raise ProblemError(400, "Idempotency-Key must be 1 to 255 characters")
        name = keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())
        value = json.dumps({"fingerprint": request_fingerprint, "prediction_id": prediction_id, "at": time.time()})
        if self.redis.set(name, value, nx=True, ex=TTL_S):
            return None
        raw = self.redis.get(name)
        existing: dict[str, Any] = json.loads(raw or value)
        if existing["fingerprint"] != request_fingerprint:
            raise ProblemError(409, "Idempotency-Key was already used with a different request body")
        stale = time.time() - float(existing.get("at", time.time())) > STALE_CLAIM_S
        if raw is not None and stale and is_stored is not None and not is_stored(existing["prediction_id"]):
            if self._replaced(name, raw, value):
                return None
            return self.claim(tenant, key, request_fingerprint, prediction_id)
        return str(existing["prediction_id"])

    def _replaced(self, name: str, seen: bytes | str, value: str) -> bool:
        """Swap the claim ``seen`` for ``value``, unless another request changed it meanwhile."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(name)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                if pipe.get(name) != seen:
                    return False
                pipe.multi()
                pipe.set(name, value, ex=TTL_S)
                pipe.execute()
            except WatchError:
                return False
        return True

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
