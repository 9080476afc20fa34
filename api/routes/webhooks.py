"""Webhook settings clients need: the caller's own signing secret, to verify deliveries, and its rotation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter

from api.deps import CurrentTenant, ServicesDep
from shared.predictions.record import format_timestamp
from shared.webhooks.secrets import TenantSecret

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


def _secret_document(secret: TenantSecret) -> dict[str, Any]:
    document: dict[str, Any] = {"key": secret.current}
    if secret.previous_active() and secret.previous_until is not None:
        # Kiln extension: until then deliveries also carry a signature made with the previous key.
        document["previous_key_expires_at"] = format_timestamp(datetime.fromtimestamp(secret.previous_until, UTC))
    return document


@router.get("/default/secret")
def default_secret(tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """``{"key": "whsec_..."}``: the caller's own secret; verify the ``webhook-signature`` header with it
    (Standard Webhooks). No other token's deliveries are signed with it."""
    return _secret_document(services.webhook_secrets.get(tenant))


@router.post("/default/secret/rotate")
def rotate_secret(tenant: CurrentTenant, services: ServicesDep) -> dict[str, Any]:
    """Kiln extension: a new secret for the caller. For ``KILN_WEBHOOK_SECRET_OVERLAP_S`` (24 h by
    default) every delivery carries signatures made with both the new and the previous secret, so a
    receiver can switch to the new one without rejecting any event."""
    return _secret_document(services.webhook_secrets.rotate(tenant))
