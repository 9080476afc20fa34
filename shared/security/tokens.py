"""API tokens. Each token is a tenant, identified by the SHA-256 of the token (tokens are never stored).

Two sources, both checked on every request:

- the bootstrap set, ``KILN_API_TOKEN``: comma-separated entries ``[name=]token`` or
  ``[name=]sha256:<hex>`` (an entry without a name is called ``token-<first 8 hex of its digest>``).
  Each API process publishes its set's names and digests to Redis at start (``publish_bootstrap``),
  so ``kiln tokens`` sees them without the API's environment;
- tokens created at run time (``kiln tokens create NAME``), stored hashed in Redis with their name
  and optional limits that override the service's (rate limit, burst, queue cap).

A name is one tenant's: creating a token under a name the bootstrap set or another created token
has is refused, atomically (of two concurrent creates of one name, one wins).

Revoking (``kiln tokens revoke NAME``) takes effect at once in every API process: a created token's
record is deleted, a bootstrap token's digest joins the revoked set (it stays refused, even after a
restart with the same ``KILN_API_TOKEN``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from redis import Redis

from shared.db import keys, lua
from shared.db.client import as_text

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "kiln_"
_HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class TokenError(ValueError):
    """A token operation that cannot be done; the message says why."""


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def tenant_of(digest: str) -> str:
    """A stable, non-reversible tenant id from a token's digest (tokens are never stored)."""
    return digest[:24]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class TokenLimits:
    """A token's own limits; None keeps the service's setting."""

    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    max_queued: int | None = None

    def to_fields(self) -> dict[str, str]:
        return {name: repr(value) for name, value in vars(self).items() if value is not None}

    @classmethod
    def from_fields(cls, fields: Mapping[str, str]) -> TokenLimits:
        rate, burst, queued = (fields.get(name) for name in ("rate_limit_per_s", "rate_limit_burst", "max_queued"))
        return cls(
            rate_limit_per_s=float(rate) if rate else None,
            rate_limit_burst=int(burst) if burst else None,
            max_queued=int(queued) if queued else None,
        )


@dataclass(frozen=True)
class TokenInfo:
    """What is known about a token (never the token itself)."""

    name: str
    digest: str
    source: Literal["env", "redis"]
    limits: TokenLimits = field(default_factory=TokenLimits)
    created_at: float | None = None
    # The token in clear: only for bootstrap entries given as the token itself (what ``make run`` prints).
    token: str | None = field(default=None, repr=False)

    @property
    def tenant(self) -> str:
        return tenant_of(self.digest)


def bootstrap_tokens(setting: str) -> list[TokenInfo]:
    """The entries of ``KILN_API_TOKEN``, in order."""
    found: list[TokenInfo] = []
    for entry in (part.strip() for part in setting.split(",")):
        if not entry:
            continue
        name, separator, value = entry.partition("=")
        # "abc==" is a token with base64 padding, not a name: a name is followed by a non-empty value.
        if not separator or not NAME.match(name) or not value or value.startswith("="):
            name, value = "", entry
        if value.startswith("sha256:") and _HEX_DIGEST.match(value.removeprefix("sha256:")):
            digest, token = value.removeprefix("sha256:"), None
        else:
            digest, token = token_digest(value), value
        found.append(TokenInfo(name or f"token-{digest[:8]}", digest, "env", token=token))
    return found


def publish_bootstrap(redis: Redis, setting: str) -> list[str]:
    """Replace the published bootstrap set (``keys.bootstrap_tokens``) with the entries of ``setting``
    (names and digests, never tokens); returns the names that created tokens use too."""
    published = {info.name: info.digest for info in bootstrap_tokens(setting)}
    with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.bootstrap_tokens())
        if published:
            pipe.hset(keys.bootstrap_tokens(), mapping=published)  # type: ignore[arg-type]
            pipe.hmget(keys.token_names(), list(published))
        replies = pipe.execute()
    taken = replies[-1] if published else []
    return [name for name, digest in zip(published, taken, strict=True) if digest is not None]


def decoded(fields: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash (bytes keys and values) as text."""
    return {as_text(key): as_text(value) for key, value in fields.items()}


def record_limits(fields: Mapping[Any, Any]) -> TokenLimits:
    return TokenLimits.from_fields(decoded(fields))


class TokenRegistry:
    """Create, list and revoke tokens (the ``kiln tokens`` commands). The bootstrap set is the one the
    running API published, and ``bootstrap_setting`` (this process's ``KILN_API_TOKEN``) besides."""

    def __init__(self, redis: Redis, bootstrap_setting: str = "") -> None:
        self.redis = redis
        self.configured = bootstrap_tokens(bootstrap_setting)
        self._create = lua.register(redis, "tokens_create")

    def _revoked(self) -> set[str]:
        members: set[Any] = self.redis.smembers(keys.revoked_tokens())
        return {as_text(member) for member in members}

    def bootstrap(self) -> list[TokenInfo]:
        """The bootstrap tokens: this process's ``KILN_API_TOKEN``, then the others the API published."""
        known = {info.digest for info in self.configured}
        published = decoded(self.redis.hgetall(keys.bootstrap_tokens()))
        return self.configured + [
            TokenInfo(name, digest, "env") for name, digest in sorted(published.items()) if digest not in known
        ]

    def list(self) -> list[TokenInfo]:
        """Every token accepted now: the bootstrap ones not revoked, then the created ones by name."""
        revoked = self._revoked()
        listed = [info for info in self.bootstrap() if info.digest not in revoked]
        names = decoded(self.redis.hgetall(keys.token_names()))
        for name, digest in sorted(names.items()):
            fields = decoded(self.redis.hgetall(keys.token(digest)))
            if not fields:
                continue
            created = fields.get("created_at")
            listed.append(
                TokenInfo(
                    name,
                    digest,
                    "redis",
                    limits=record_limits(fields),
                    created_at=float(created) if created else None,
                )
            )
        return listed

    def create(self, name: str, limits: TokenLimits | None = None) -> str:
        """A new token named ``name``; returns it (the only time it is seen: only its digest is kept).
        A name in use (bootstrap or created) is refused, atomically."""
        if not NAME.match(name):
            raise TokenError(f"{name!r} is not a token name: letters, digits, '.', '_', '-', at most 64")
        if any(info.name == name for info in self.configured):
            raise TokenError(f"a token named {name!r} is in KILN_API_TOKEN; pick another name")
        token = new_token()
        digest = token_digest(token)
        record = {"name": name, "created_at": repr(time.time())} | (limits or TokenLimits()).to_fields()
        fields = [part for item in record.items() for part in item]
        outcome = as_text(
            self._create(
                keys=[keys.token_names(), keys.bootstrap_tokens(), keys.token(digest)], args=[name, digest, *fields]
            )
        )
        if outcome == "bootstrap":
            raise TokenError(f"a token named {name!r} is in the running API's KILN_API_TOKEN; pick another name")
        if outcome == "exists":
            raise TokenError(f"a token named {name!r} exists; revoke it first or pick another name")
        return token

    def revoke(self, name: str) -> TokenInfo:
        """Refuse the token named ``name`` from now on, in every API process."""
        found: Any = self.redis.hget(keys.token_names(), name)
        if found is not None:
            digest = as_text(found)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(keys.token(digest))
                pipe.hdel(keys.token_names(), name)
                pipe.execute()
            return TokenInfo(name, digest, "redis")
        for info in self.bootstrap():
            if info.name == name:
                self.redis.sadd(keys.revoked_tokens(), info.digest)
                return info
        raise TokenError(f"no token named {name!r}")
