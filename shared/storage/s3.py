"""S3-compatible object storage through boto3: the one place Kiln talks to S3.

Where objects live and the errors callers handle are in ``shared.storage.objects``, which needs no boto3.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.settings import Settings
from shared.storage.objects import ObjectNotFound, StorageUnavailable, StoredObject


def _client(
    settings: Settings, endpoint_url: str, retries: int = 3, connect_timeout_s: float = 5, read_timeout_s: float = 30
) -> Any:  # boto3 has no annotations
    # Path-style addressing and SigV4 work with every S3-compatible server; botocore >= 1.36 sends
    # CRC checksums by default, which some servers reject, so only send them when required.
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        # Standard mode retries connection errors, throttling and 5xx with jittered exponential backoff;
        # its max_attempts counts the retries, not the first try.
        retries={"max_attempts": retries, "mode": "standard"},
        connect_timeout=connect_timeout_s,
        read_timeout=read_timeout_s,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=config,
    )


PROBE_TIMEOUT_S = 2.0
# Reads (``open``): a server silent this long between bytes is stalled, whatever the object's size.
READ_TIMEOUT_S = 10.0


class Storage:
    def __init__(self, settings: Settings, retries: int = 3) -> None:
        self._settings = settings
        self.bucket = settings.s3_bucket
        self._retries = retries
        self.client = _client(settings, settings.s3_endpoint_url, retries)
        # Presigned URLs must be signed for the host that outside consumers will reach.
        self._presign_client = _client(settings, settings.s3_public_endpoint_url or settings.s3_endpoint_url)

    def ensure_bucket(self, wait_s: float = 60.0) -> None:
        """Create the bucket when missing, waiting for the server to come up (it may start after us)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchBucket", "NotFound"}:
                    self._create_bucket()
                    return
                if time.monotonic() > deadline:
                    raise
            except BotoCoreError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def _create_bucket(self) -> None:
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # Another process won the race: fine.
            if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    @cached_property
    def _probe_client(self) -> Any:
        """A client for ``ping``: one try, 2 s to connect and 2 s to answer."""
        return _client(self._settings, self._settings.s3_endpoint_url, 0, PROBE_TIMEOUT_S, PROBE_TIMEOUT_S)

    @cached_property
    def _reads_client(self) -> Any:
        """A client for ``open``: the same retries, ``READ_TIMEOUT_S`` to answer each (a download waited 120 s for a
        stalled S3 with the transfers' client, four tries of the 30 s that also covers a large write's reply)."""
        return _client(self._settings, self._settings.s3_endpoint_url, self._retries, read_timeout_s=READ_TIMEOUT_S)

    def ping(self) -> None:
        """Raise if the bucket cannot be reached within ``PROBE_TIMEOUT_S`` (a readiness probe's question: with
        the transfers' client, a stalled S3 held it 120 s, four tries of a 30 s read timeout)."""
        self._probe_client.head_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` at ``key``; ``StorageUnavailable`` when the server cannot be reached or refuses it."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(str(exc)) from exc

    def copy(self, source: str, key: str) -> None:
        """Copy the object at ``source`` to ``key`` inside the server (no bytes through Kiln):
        ``ObjectNotFound`` when ``source`` is gone, ``StorageUnavailable`` when the server fails."""
        try:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise ObjectNotFound(source) from None
            raise StorageUnavailable(str(exc)) from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(str(exc)) from exc

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix``; returns how many."""
        deleted = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
                deleted += len(objects)
        return deleted

    def open(self, key: str) -> StoredObject:
        try:
            reply = self._reads_client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                raise ObjectNotFound(key) from None
            raise
        return StoredObject(
            body=reply["Body"].iter_chunks(64 * 1024),
            content_type=reply.get("ContentType") or "application/octet-stream",
            content_length=reply["ContentLength"],
        )

    def presigned_get_url(self, key: str, expires_s: int = 3600) -> str:
        url: str = self._presign_client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
        )
        return url
