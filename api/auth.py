"""Who a request's token belongs to, checked against Redis on every request so a revoked token is
refused at once by every API process (``shared.security.tokens``)."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio

from shared.db import keys
from shared.security.tokens import TokenInfo, bootstrap_tokens, record_limits, tenant_of, token_digest
from shared.settings import Settings


@dataclass(frozen=True)
class Caller:
    """An authenticated token: its tenant, its name, and the limits that apply to it."""

    tenant: str
    name: str
    rate_limit_per_s: float
    rate_limit_burst: int
    max_queued: int


class Authenticator:
    def __init__(self, client: redis.asyncio.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.bootstrap: dict[str, TokenInfo] = {info.digest: info for info in bootstrap_tokens(settings.api_token)}

    async def caller(self, token: str) -> Caller | None:
        """The token's caller, or None for a token that is unknown or revoked. One round trip."""
        digest = token_digest(token)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.token(digest))
            pipe.sismember(keys.revoked_tokens(), digest)
            fields, revoked = await pipe.execute()
        if revoked:
            return None
        if fields:
            name, limits = fields[b"name"].decode(), record_limits(fields)
        elif digest in self.bootstrap:
            name, limits = self.bootstrap[digest].name, self.bootstrap[digest].limits
        else:
            return None
        settings = self.settings
        return Caller(
            tenant=tenant_of(digest),
            name=name,
            rate_limit_per_s=limits.rate_limit_per_s or settings.rate_limit_per_s,
            rate_limit_burst=limits.rate_limit_burst or settings.rate_limit_burst,
            max_queued=limits.max_queued or settings.max_queued_per_tenant,
        )
