"""Tenants for the integration tests: fresh tokens (``shared.security.tokens``), made in the stack's Redis so
a test never shares a tenant's limits, secrets or streams with another test."""

from __future__ import annotations

import secrets

import httpx
import redis

from shared.security.tokens import TokenLimits, TokenRegistry


def new_token(redis_url: str, prefix: str = "test", **limits: float | int) -> tuple[str, str]:
    """Create a token (as ``kiln tokens create`` does); returns its name and the token."""
    name = f"{prefix}-{secrets.token_hex(4)}"
    with redis.Redis.from_url(redis_url) as client:
        token = TokenRegistry(client).create(name, TokenLimits(**limits))  # type: ignore[arg-type]
    return name, token


def client_for(base_url: str, token: str | None, **options: object) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(**({"base_url": base_url, "headers": headers, "timeout": 30} | options))  # type: ignore[arg-type]
