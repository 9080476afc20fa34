"""``Idempotency-Key`` on create: the same key and body from the same token return the first prediction."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis.asyncio
from redis import Redis
from redis.exceptions import ConnectionError, ReadOnlyError, RedisError, TimeoutError, WatchError

from api.errors import ProblemError
from shared.db import keys

TTL_S = 24 * 3600
# A claim whose request stored nothing within this long was abandoned (its API process died, or a
# failover lost what it stored): the next request with the key takes it over instead of a 409 for a day.
STALE_CLAIM_S = 120.0
# Each API process says it is alive (``keys.api_alive``) every OWNER_BEAT_S, for OWNER_TTL_S. A claim names its
# process: one older than OWNER_GONE_S whose process no longer says so, and that stored nothing, is taken over
# then (its process was killed mid-request) rather than after STALE_CLAIM_S.
OWNER_BEAT_S = 3.0
OWNER_TTL_S = 15.0
OWNER_GONE_S = 15.0
# How long a duplicate request waits for the first one's result before a 409 asking it to retry.
DUPLICATE_WAIT_S = 10.0
# A fenced claim (a single create's: its store checks that the claim still names it) that stored nothing is
# taken over once this old, whatever its process: its request may be alive, but it can no longer store (a
# failover lost its record, or it is that slow), and should it try, its store is refused.
FENCED_TAKEOVER_S = 10.0
# A failed request's release is retried for this long: through a Redis failover (about 2.5 s, plus what the
# client's own retries take to reach the promoted replica), so that the key is not left claimed until stale.
RELEASE_RETRY_S = 20.0
RELEASE_RETRY_WAIT_S = 0.5

T = TypeVar("T")
log = logging.getLogger(__name__)


def fingerprint(target: str, body: dict[str, Any]) -> str:
    """What makes two requests the same: where they were sent and their body, canonically."""
    return hashlib.sha256(json.dumps({"target": target, "body": body}, sort_keys=True).encode()).hexdigest()


class IdempotencyKeys:
    """The claims; with ``owner`` (this API process, unique), each claim names it, and ``start`` keeps saying
    that it is alive."""

    def __init__(self, redis: Redis, owner: str | None = None) -> None:
        self.redis = redis
        self.owner = owner
        self._beating: asyncio.Task[None] | None = None

    async def start(self, client: redis.asyncio.Redis) -> None:
        """Say that this process is alive, now and every ``OWNER_BEAT_S`` until ``close``."""
        if self.owner is None:
            return
        name = keys.api_alive(self.owner)
        with contextlib.suppress(RedisError, OSError):
            await client.set(name, "1", ex=round(OWNER_TTL_S))
        self._beating = asyncio.create_task(self._beat(client, name), name="kiln-api-alive")

    async def _beat(self, client: redis.asyncio.Redis, name: str) -> None:
        while True:
            await asyncio.sleep(OWNER_BEAT_S)
            try:
                await client.set(name, "1", ex=round(OWNER_TTL_S))
            except (RedisError, OSError) as exc:
                log.warning("could not say this API process is alive (%s)", exc)

    async def close(self) -> None:
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating

    def claim(
        self,
        tenant: str,
        key: str,
        request_fingerprint: str,
        prediction_id: str,
        is_stored: Callable[[str], bool] | None = None,
        record_key: Callable[[str], str] | None = None,
    ) -> str | None:
        """Bind ``key`` to ``prediction_id`` if unused (atomically, so concurrent duplicates agree).

        Returns None when this request owns the key, else the id of the prediction the key already
        names. Raises 409 when the key was used with a different request. With ``is_stored`` (whether
        what a claim names was stored), a claim that stored nothing is taken over once its request may have
        died between claiming and storing (``_abandoned``). ``record_key`` (a prediction id's record key)
        makes the claim fenced: for a create whose store checks that its claim still names it
        (``store_create.lua``), so its claim is taken over sooner, only while that record is absent.
        """
        if not key or len(key) > 255:
            raise ProblemError(400, "Idempotency-Key must be 1 to 255 characters")
        name = self.claim_key(tenant, key)
        claim: dict[str, Any] = {"fingerprint": request_fingerprint, "prediction_id": prediction_id, "at": time.time()}
        if self.owner is not None:
            claim["owner"] = self.owner
        if record_key is not None:
            claim["fenced"] = True
        value = json.dumps(claim)
        if self.redis.set(name, value, nx=True, ex=TTL_S):
            return None
        raw = self.redis.get(name)
        existing: dict[str, Any] = json.loads(raw or value)
        if existing["fingerprint"] != request_fingerprint:
            raise ProblemError(409, "Idempotency-Key was already used with a different request body")
        if raw is not None and is_stored is not None and self._abandoned(existing):
            if is_stored(existing["prediction_id"]):
                return str(existing["prediction_id"])
            record = record_key(existing["prediction_id"]) if record_key is not None else None
            if self._replaced(name, raw, value, record):
                return None
            return self.claim(tenant, key, request_fingerprint, prediction_id, is_stored, record_key)
        return str(existing["prediction_id"])

    @staticmethod
    def claim_key(tenant: str, key: str) -> str:
        """The Redis key of ``key``'s claim, which a single create's store checks still names its prediction."""
        return keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())

    def _abandoned(self, existing: dict[str, Any]) -> bool:
        """Whether a claim's request may have died: older than ``STALE_CLAIM_S``, or than ``OWNER_GONE_S`` with
        its process no longer alive; a fenced claim once older than ``FENCED_TAKEOVER_S``."""
        age = time.time() - float(existing.get("at", time.time()))
        if age > STALE_CLAIM_S or (existing.get("fenced") and age > FENCED_TAKEOVER_S):
            return True
        owner = existing.get("owner")
        return age > OWNER_GONE_S and owner is not None and not self.redis.exists(keys.api_alive(owner))

    def _replaced(self, name: str, seen: bytes | str, value: str, absent: str | None = None) -> bool:
        """Swap the claim ``seen`` for ``value``, unless another request changed it meanwhile, or (``absent``:
        the record of the prediction it names) its request stored it meanwhile."""
        watched = [name] if absent is None else [name, absent]
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(*watched)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                if pipe.get(name) != seen or (absent is not None and pipe.exists(absent)):
                    return False
                pipe.multi()
                pipe.set(name, value, ex=TTL_S)
                pipe.execute()
            except WatchError:
                return False
        return True

    def release(self, tenant: str, key: str, prediction_id: str | None = None) -> None:
        """Forget a key whose request failed before anything was stored (or whose stored prediction a failover
        lost), so a retry can use it; with ``prediction_id``, only while the key still names it (not a request
        that took the key over since).

        The request failed most likely because Redis did (a failover): the release is retried until Redis
        answers, for up to ``RELEASE_RETRY_S``. A key left claimed would answer every retry of the request 409
        after waiting ``DUPLICATE_WAIT_S``, until the claim is stale (``STALE_CLAIM_S``)."""
        name = self.claim_key(tenant, key)
        deadline = time.monotonic() + RELEASE_RETRY_S
        while True:
            try:
                if prediction_id is None:
                    self.redis.delete(name)
                elif not self._forgotten(name, prediction_id):
                    continue  # the key changed while it was read: read it again
                return
            except (ConnectionError, TimeoutError, ReadOnlyError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(RELEASE_RETRY_WAIT_S)

    def _forgotten(self, name: str, prediction_id: str) -> bool:
        """Delete the claim ``name`` if it names ``prediction_id``; False if it changed meanwhile."""
        with self.redis.pipeline() as pipe:
            try:
                pipe.watch(name)  # type: ignore[no-untyped-call]  # redis-py leaves watch untyped
                raw = pipe.get(name)
                if raw is None or json.loads(raw)["prediction_id"] != prediction_id:
                    return True
                pipe.multi()
                pipe.delete(name)
                pipe.execute()
            except WatchError:
                return False
        return True

    @contextmanager
    def released_on_failure(self, tenant: str, key: str | None, prediction_id: str | None = None) -> Iterator[None]:
        """The block stores what ``key`` (if any) was claimed for; should it fail, ``release`` the key."""
        try:
            yield
        except BaseException:
            if key is not None:
                self.release(tenant, key, prediction_id)
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
