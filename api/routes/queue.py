"""Queue depth: how many predictions wait to start, for the caller and per model family."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CurrentCaller, ServicesDep
from shared.scheduling import queues

router = APIRouter(prefix="/v1", tags=["queue"])


@router.get("/queue")
def queue_depth(caller: CurrentCaller, services: ServicesDep) -> dict[str, Any]:
    """``queued``: the caller's predictions not yet started, and ``max_queued`` the caller's cap (its
    token's, else ``KILN_MAX_QUEUED_PER_TENANT``); ``families``: every tenant's, per model family
    (Celery queue); ``total``: all of them, the number ``KILN_MAX_QUEUED_TOTAL`` caps."""
    depth = services.store.queued.depth(caller.tenant)
    families = {name: 0 for name in queues.GPU_QUEUES} | depth.families
    settings = services.settings
    return {
        "queued": depth.tenant,
        "max_queued": caller.max_queued or settings.max_queued_per_tenant,
        "families": {name: {"queued": count} for name, count in sorted(families.items())},
        "total": {"queued": depth.total, "max_queued": settings.max_queued_total},
    }
