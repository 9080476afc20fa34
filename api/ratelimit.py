"""Per-token rate limiting: a token bucket in Redis, shared by every API replica."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis.asyncio
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.db import keys, lua
from shared.db.client import run_script


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    # Seconds until a request would be allowed again (0 when allowed now).
    retry_after_s: int
    # Seconds until the bucket is full again.
    reset_s: int
    # The bucket's tokens left after the request was (or could not be) taken.
    tokens: float = 0.0

    @classmethod
    def of(cls, allowed: bool, tokens: float, cost: int, rate_per_s: float, burst: int) -> Decision:
        """The decision a bucket's answer means: ``tokens`` left after ``cost`` was (or could not be) taken."""
        return cls(
            allowed=allowed,
            remaining=int(tokens),
            retry_after_s=0 if allowed else math.ceil((cost - tokens) / rate_per_s),
            reset_s=math.ceil((burst - tokens) / rate_per_s),
            tokens=tokens,
        )

    def headers(self) -> dict[str, str]:
        return {"ratelimit-remaining": str(self.remaining), "ratelimit-reset": str(self.reset_s)}


# The tokens an API process remembers as spent (a few dozen bytes each); all are forgotten when full.
SPENT_KEPT = 4096


@dataclass(frozen=True)
class SpentBucket:
    """A bucket found with less than one request left: when (monotonic), how much, and its limits."""

    at: float
    tokens: float
    rate_per_s: float
    burst: int


class SpentBuckets:
    """The tokens whose bucket this process found empty, until it holds a request again: their requests are
    refused (429) at once, before the round trip, the body's checks and the create's work that would only
    find the bucket empty again. A token sending a thousand creates a second past its limit cost the process
    as much as the creates themselves (each was checked before its store found the bucket empty), and slowed
    every other token's requests on it. Never refuses what the bucket would hold: every process only takes
    from it, so it refills no sooner than its rate says."""

    def __init__(self) -> None:
        self._spent: dict[str, SpentBucket] = {}

    def note(self, token: str, decision: Decision, rate_per_s: float, burst: int) -> None:
        """Remember ``token``'s bucket when ``decision`` found it without a request left."""
        if decision.allowed or decision.tokens >= 1:
            return
        if len(self._spent) >= SPENT_KEPT:  # tokens are the clients': keep a bounded few
            self._spent.clear()
        self._spent[token] = SpentBucket(time.monotonic(), decision.tokens, rate_per_s, burst)

    def refusal(self, token: str) -> tuple[SpentBucket, Decision] | None:
        """The bucket and the refusal of a request of ``token`` now, while its bucket is still spent."""
        spent = self._spent.get(token)
        if spent is None:
            return None
        tokens = spent.tokens + (time.monotonic() - spent.at) * spent.rate_per_s
        if tokens >= 1:
            del self._spent[token]
            return None
        return spent, Decision.of(False, tokens, 1, spent.rate_per_s, spent.burst)


class RateLimiter:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        # Async, so the check runs on the event loop instead of costing every request a thread hop.
        self._take = lua.register(client, "ratelimit_take")

    async def take(self, tenant: str, rate_per_s: float, burst: int, cost: int = 1) -> Decision:
        """Take ``cost`` from the tenant's bucket (``rate_per_s`` refill, ``burst`` deep: the token's limits)."""
        allowed, left = await run_script(self._take, [keys.rate_limit(tenant)], [rate_per_s, burst, cost])
        return Decision.of(bool(allowed), float(left), cost, rate_per_s, burst)


# Where ``api.deps`` leaves the caller's ``ratelimit-*`` headers for ``RateLimitHeaders``.
STATE_KEY = "ratelimit_headers"


class RateLimitHeaders:
    """Adds the caller's ``ratelimit-*`` headers to every answer of an authenticated request: creates
    (which answer with a response of their own), errors and streams too, not only plain GETs."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                found = scope.get("state", {}).get(STATE_KEY)
                if found:
                    headers = MutableHeaders(scope=message)
                    for name, value in found.items():
                        if name not in headers:
                            headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
