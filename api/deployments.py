"""Deployments as Replicate has them: a tenant's named release pinning a model version, with the
hardware and instance counts it asks for. Predictions made through one run that model's version on
its queue and carry ``deployment``. Stored per tenant in one Redis hash (``keys.tenant_deployments``);
each change makes a new release (``number`` + 1). Light (no torch): the API uses it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_serializer
from redis import Redis
from redis.exceptions import WatchError

from shared.db import keys
from shared.predictions.record import format_timestamp, utcnow

# Replicate's deployment names: lowercase letters, digits, dashes, underscores and periods.
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,99}$"
# The most instances a deployment may ask for (a guard against typos, far above one tenant's GPUs).
MAX_INSTANCES = 1000


class Configuration(BaseModel):
    hardware: str
    min_instances: int = Field(ge=0, le=MAX_INSTANCES)
    max_instances: int = Field(ge=1, le=MAX_INSTANCES)


class Release(BaseModel):
    number: int
    model: str
    version: str
    created_at: datetime
    # The account that made it (``GET /v1/account``'s shape).
    created_by: dict[str, Any]
    configuration: Configuration

    @field_serializer("created_at")
    def _timestamp(self, moment: datetime) -> str | None:
        return format_timestamp(moment)


class Deployment(BaseModel):
    owner: str
    name: str
    current_release: Release

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    def render(self) -> dict[str, Any]:
        """As Replicate answers it."""
        return self.model_dump(mode="json")


class DeploymentExists(Exception):
    pass


class BadConfiguration(ValueError):
    pass


def check_configuration(configuration: Configuration) -> Configuration:
    if configuration.max_instances < configuration.min_instances:
        raise BadConfiguration(
            f"max_instances ({configuration.max_instances}) is less than min_instances ({configuration.min_instances})"
        )
    return configuration


class DeploymentStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def create(self, tenant: str, deployment: Deployment) -> None:
        """Store a new deployment; ``DeploymentExists`` when the tenant has one of that name."""
        if not self.redis.hsetnx(keys.tenant_deployments(tenant), deployment.name, deployment.model_dump_json()):
            raise DeploymentExists(deployment.name)

    def get(self, tenant: str, name: str) -> Deployment | None:
        raw = self.redis.hget(keys.tenant_deployments(tenant), name)
        return None if raw is None else Deployment.model_validate_json(raw)

    def list(self, tenant: str) -> list[Deployment]:
        """By name."""
        found = self.redis.hgetall(keys.tenant_deployments(tenant))
        return [Deployment.model_validate_json(found[name]) for name in sorted(found)]

    def release(self, tenant: str, name: str, created_by: dict[str, Any], **changes: Any) -> Deployment | None:
        """A new release of the deployment with ``changes`` (version, hardware, instance counts),
        atomically against concurrent updates; None when there is no such deployment, and
        ``BadConfiguration`` (nothing changed) when the instance counts would not fit together."""
        key = keys.tenant_deployments(tenant)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)  # type: ignore[no-untyped-call]
                    raw = pipe.hget(key, name)
                    if raw is None:
                        pipe.reset()
                        return None
                    current = Deployment.model_validate_json(raw)
                    release = current.current_release
                    configuration = check_configuration(
                        Configuration.model_validate(
                            release.configuration.model_dump()
                            | {k: v for k, v in changes.items() if k in Configuration.model_fields and v is not None}
                        )
                    )
                    updated = current.model_copy(
                        update={
                            "current_release": Release(
                                number=release.number + 1,
                                model=release.model,
                                version=changes.get("version") or release.version,
                                created_at=utcnow(),
                                created_by=created_by,
                                configuration=configuration,
                            )
                        }
                    )
                    pipe.multi()
                    pipe.hset(key, name, updated.model_dump_json())
                    pipe.execute()
                    return updated
                except WatchError:
                    continue

    def delete(self, tenant: str, name: str) -> bool:
        return bool(self.redis.hdel(keys.tenant_deployments(tenant), name))
