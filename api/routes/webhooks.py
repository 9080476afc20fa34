"""Webhook settings clients need: the signing secret, to verify deliveries."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentTenant, ServicesDep
from shared.secrets import webhook_secret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.get("/default/secret")
def default_secret(_: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """``{"key": "whsec_..."}``: verify the ``webhook-signature`` header with it (Standard Webhooks)."""
    return {"key": webhook_secret(services.settings, services.redis)}
