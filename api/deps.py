"""FastAPI dependencies, as ``Annotated`` aliases routes can declare.

All are ``async def``: FastAPI runs a plain ``def`` dependency in a worker thread, and a thread hop
per dependency cost more than the checks themselves on every request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Response

from api.errors import ProblemError
from api.services import Services
from shared.settings import Settings, tenant_of, token_digest
from shared.store import PredictionStore


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def get_settings_dep(services: Annotated[Services, Depends(get_services)]) -> Settings:
    return services.settings


async def get_store(services: Annotated[Services, Depends(get_services)]) -> PredictionStore:
    return services.store


async def optional_tenant(request: Request, settings: Annotated[Settings, Depends(get_settings_dep)]) -> str | None:
    """The tenant of the request's token, None without credentials; 401 for an invalid token.

    Accepts ``Bearer <token>`` and Replicate's older ``Token <token>``.
    """
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() not in {"bearer", "token"} or not token:
        raise ProblemError(
            401, "malformed credentials: send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    digest = token_digest(token)
    # Every known digest is compared, in constant time, so timing says nothing about which matched.
    matches = [hmac.compare_digest(digest, known) for known in settings.token_digests]
    if not any(matches):
        raise ProblemError(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
    return tenant_of(digest)


async def current_tenant(
    tenant: Annotated[str | None, Depends(optional_tenant)],
    services: Annotated[Services, Depends(get_services)],
    response: Response,
) -> str:
    """The authenticated tenant, within its rate limit (429 with ``Retry-After`` beyond it)."""
    if tenant is None:
        raise ProblemError(
            401, "missing credentials: send 'Authorization: Bearer <token>'", headers={"WWW-Authenticate": "Bearer"}
        )
    decision = await services.rate_limiter.take(tenant)
    if not decision.allowed:
        raise ProblemError(
            429,
            f"rate limit exceeded: {services.settings.rate_limit_per_s:g} requests per second "
            f"with bursts of {services.settings.rate_limit_burst}",
            headers=decision.headers() | {"Retry-After": str(decision.retry_after_s)},
        )
    response.headers.update(decision.headers())
    return tenant


async def base_url(request: Request, settings: Annotated[Settings, Depends(get_settings_dep)]) -> str:
    """Absolute base URL for links in responses: the configured public URL, else the request's."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[PredictionStore, Depends(get_store)]
CurrentTenant = Annotated[str, Depends(current_tenant)]
OptionalTenant = Annotated[str | None, Depends(optional_tenant)]
BaseURL = Annotated[str, Depends(base_url)]
