"""Uploaded files (Replicate's Files API): bytes in S3, metadata in Redis, owned by a tenant, expiring."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, field_serializer
from redis import Redis

if TYPE_CHECKING:
    from shared.storage.s3 import Storage

from shared.db import keys
from shared.db.client import as_text
from shared.predictions import retention
from shared.predictions.record import format_timestamp, new_id, utcnow
from shared.storage.objects import ObjectNotFound, StoredObject, file_key

_FILE_PATH = re.compile(r"^/v1/files/([0-9a-z]{26})$")


class FileRecord(BaseModel):
    id: str
    tenant: str
    name: str
    content_type: str
    size: int
    sha256: str
    md5: str
    metadata: dict[str, Any]
    created_at: datetime
    expires_at: datetime

    @field_serializer("created_at", "expires_at")
    def _timestamps(self, moment: datetime) -> str | None:
        return format_timestamp(moment)


def render_file(record: FileRecord, base_url: str) -> dict[str, Any]:
    """The file object as Replicate's API returns it."""
    url = f"{base_url}/v1/files/{record.id}"
    return {
        "id": record.id,
        "name": record.name,
        "content_type": record.content_type,
        "size": record.size,
        "etag": record.md5,
        "checksums": {"sha256": record.sha256, "md5": record.md5},
        "metadata": record.metadata,
        "created_at": format_timestamp(record.created_at),
        "expires_at": format_timestamp(record.expires_at),
        "urls": {"get": url},
    }


def file_id_from_url(url: str, base_url: str) -> str | None:
    """The id of one of our files when ``url`` is its ``urls.get`` on this API, else None."""
    parts, base = urlsplit(url), urlsplit(base_url)
    if (parts.scheme, parts.netloc) != (base.scheme, base.netloc):
        return None
    match = _FILE_PATH.match(parts.path)
    return match[1] if match else None


class FileStore:
    def __init__(self, redis: Redis, storage: Storage, retention_s: int) -> None:
        self.redis = redis
        self.storage = storage
        self.retention_s = retention_s

    def create(self, tenant: str, name: str, content_type: str, data: bytes, metadata: dict[str, Any]) -> FileRecord:
        """Store the bytes first, then the record, so a record never points at a missing object."""
        now = utcnow()
        record = FileRecord(
            id=new_id(),
            tenant=tenant,
            name=name,
            content_type=content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            md5=hashlib.md5(data, usedforsecurity=False).hexdigest(),
            metadata=metadata,
            created_at=now,
            expires_at=now + timedelta(seconds=self.retention_s),
        )
        # Serialized first: a record that cannot be stored must not leave its bytes behind in S3.
        serialized = record.model_dump_json()
        self.storage.put_bytes(file_key(record.id), data, content_type)
        with self.redis.pipeline(transaction=True) as pipe:
            # Expires at the instant the janitor deletes its bytes (not retention_s after a slow upload ended).
            pipe.set(keys.file(record.id), serialized, pxat=int(record.expires_at.timestamp() * 1000))
            pipe.zadd(keys.tenant_files(tenant), {record.id: 0})
            pipe.execute()
        # With its tenant, so the janitor also drops it from the tenant's list (keys.tenant_files).
        retention.schedule(self.redis, "file", f"{record.id}:{tenant}", record.expires_at.timestamp())
        return record

    def get(self, file_id: str, tenant: str) -> FileRecord | None:
        """The tenant's file, or None when missing, expired or someone else's."""
        raw = self.redis.get(keys.file(file_id))
        record = FileRecord.model_validate_json(raw) if raw else None
        return record if record is not None and record.tenant == tenant else None

    def open(self, record: FileRecord) -> StoredObject | None:
        """The file's bytes, or None when they are gone: deleted (or expired) since its record was read."""
        try:
            return self.storage.open(file_key(record.id))
        except ObjectNotFound:
            return None

    def read(self, file_id: str, tenant: str) -> bytes | None:
        record = self.get(file_id, tenant)
        stored = self.open(record) if record is not None else None
        return b"".join(stored.body) if stored is not None else None

    def delete(self, record: FileRecord) -> None:
        """The record first: a request that finds it after this finds no file, and one that found it just
        before gets None from ``open``."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file(record.id))
            pipe.zrem(keys.tenant_files(record.tenant), record.id)
            pipe.execute()
        self.storage.delete(file_key(record.id))

    def list_for_tenant(
        self, tenant: str, limit: int, *, before: str | None = None, after: str | None = None
    ) -> tuple[list[FileRecord], bool]:
        """Newest first, older than ``before`` or newer than ``after`` (ids, exclusive); and whether
        more exist beyond the page in that direction. Expired entries are dropped from the index on
        the way (a page may then be short)."""
        index = keys.tenant_files(tenant)
        if after is not None:
            ids = [as_text(i) for i in self.redis.zrangebylex(index, f"({after}", "+", start=0, num=limit + 1)]
            more, ids = len(ids) > limit, ids[:limit][::-1]
        else:
            upper = f"({before}" if before is not None else "+"
            ids = [as_text(i) for i in self.redis.zrevrangebylex(index, upper, "-", start=0, num=limit + 1)]
            more, ids = len(ids) > limit, ids[:limit]
        raws = self.redis.mget([keys.file(i) for i in ids]) if ids else []
        expired = [i for i, raw in zip(ids, raws, strict=True) if raw is None]
        if expired:
            self.redis.zrem(index, *expired)
        return [FileRecord.model_validate_json(raw) for raw in raws if raw is not None], more
