"""Who a request's token belongs to, checked against Redis on every request so a revoked token is
refused at once by every API process (``shared.security.tokens``).

A token's record never changes while it exists (``kiln tokens`` creates and revokes, nothing else), and
a bootstrap token's limits are this process's settings: what one check found about a token stays true
until the token is revoked. So a single create of a token this process has seen valid may leave the
check itself (revoked? its rate limit?) to its store's script (``Authenticator.deferred``,
``shared.predictions.store.TokenCheck``), and spare a round trip; anything answered before that store
checks the token first (``api.deps.DeferredAuth``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio

from api.ratelimit import Decision
from shared.db import keys, lua
from shared.db.client import run_script
from shared.predictions.store import TokenCheck
from shared.security.tokens import TokenInfo, TokenLimits, bootstrap_tokens, record_limits, tenant_of, token_digest
from shared.settings import Settings


@dataclass(frozen=True)
class Caller:
    """An authenticated token: its tenant, its name, and the limits that apply to it."""

    tenant: str
    name: str
    rate_limit_per_s: float
    rate_limit_burst: int
    max_queued: int


# The tokens an API process remembers as seen valid (a few hundred bytes each); all are forgotten when full.
SEEN_KEPT = 4096


class Authenticator:
    def __init__(self, client: redis.asyncio.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.bootstrap: dict[str, TokenInfo] = {info.digest: info for info in bootstrap_tokens(settings.api_token)}
        self._auth_take = lua.register(client, "auth_take")
        # Tokens seen valid, by digest: their caller and how the store checks them (``deferred``).
        self._seen: dict[str, tuple[Caller, TokenCheck]] = {}

    def deferred(self, token: str) -> tuple[Caller, TokenCheck] | None:
        """The caller of a token this process has seen valid, and the check its create's store makes
        (``TokenCheck``: not revoked since, within its rate limit); None for a token not seen valid (or
        forgotten), which must be checked now (``caller_within_limit``)."""
        return self._seen.get(token_digest(token))

    def forget(self, digest: str) -> None:
        """A token found unknown or revoked: checked before anything else from now on."""
        self._seen.pop(digest, None)

    def _remember(self, digest: str, caller: Caller, fields: Mapping[bytes, bytes]) -> None:
        if len(self._seen) >= SEEN_KEPT:  # tokens are the clients': keep a bounded few
            self._seen.clear()
        check = TokenCheck(digest, not fields, caller.rate_limit_per_s, caller.rate_limit_burst)
        self._seen[digest] = (caller, check)

    async def caller_within_limit(self, token: str, cost: int = 1) -> tuple[Caller, Decision] | None:
        """The token's caller and ``cost`` taken from its rate limit, in one round trip (``auth_take.lua``);
        None for a token that is unknown or revoked (nothing taken)."""
        digest = token_digest(token)
        tenant = tenant_of(digest)
        settings = self.settings
        boot = self.bootstrap.get(digest)
        boot_limits = boot.limits if boot is not None else TokenLimits()
        args: list[str | int | float] = [
            digest,
            int(boot is not None),
            settings.rate_limit_per_s,
            settings.rate_limit_burst,
            boot_limits.rate_limit_per_s or settings.rate_limit_per_s,
            boot_limits.rate_limit_burst or settings.rate_limit_burst,
            cost,
        ]
        reply = await run_script(
            self._auth_take, [keys.token(digest), keys.revoked_tokens(), keys.rate_limit(tenant)], args
        )
        if not reply[0]:
            self.forget(digest)
            return None
        _, flat, allowed, left = reply
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        caller = self._caller(digest, fields)
        if caller is None:  # not reached: the script found a record, or the token is a bootstrap one
            return None
        self._remember(digest, caller, fields)
        return caller, Decision.of(bool(allowed), float(left), cost, caller.rate_limit_per_s, caller.rate_limit_burst)

    async def caller(self, token: str) -> Caller | None:
        """The token's caller, or None for a token that is unknown or revoked. One round trip."""
        digest = token_digest(token)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.token(digest))
            pipe.sismember(keys.revoked_tokens(), digest)
            fields, revoked = await pipe.execute()
        if revoked:
            return None
        return self._caller(digest, fields)

    def _caller(self, digest: str, fields: Mapping[bytes, bytes]) -> Caller | None:
        """The caller of a token from its record's fields (none for a bootstrap token), or None when unknown."""
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
