"""Liveness and readiness."""

from __future__ import annotations

import redis
from botocore.exceptions import BotoCoreError, ClientError
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/health")
def health(services: ServicesDep) -> JSONResponse:
    """200 when Redis and S3 answer, 503 naming what does not."""
    checks: dict[str, str] = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except redis.exceptions.RedisError as exc:
        checks["redis"] = f"unavailable: {exc}"
    try:
        services.storage.ping()
        checks["s3"] = "ok"
    except (BotoCoreError, ClientError) as exc:
        checks["s3"] = f"unavailable: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    return JSONResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks}, status_code=200 if healthy else 503
    )
