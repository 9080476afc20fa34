"""Objects in storage, without the S3 client: where each one lives, what reading one gives, the errors.

``shared.storage.s3`` talks to S3 through boto3; everything here is plain Python, so code that only
names keys or handles storage errors (the runner, the API's routes, the GPU kit) does not import boto3.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


def prediction_prefix(prediction_id: str) -> str:
    """Everything stored for one prediction lives under this prefix (deleted together at retention)."""
    return f"predictions/{prediction_id}/"


def output_key(prediction_id: str, name: str) -> str:
    return f"{prediction_prefix(prediction_id)}{name}"


def file_key(file_id: str) -> str:
    """An uploaded file (Files API)."""
    return f"files/{file_id}"


def input_key(prediction_id: str, field: str) -> str:
    return f"{prediction_prefix(prediction_id)}inputs/{field}"


def batch_prefix(batch_id: str) -> str:
    """What a batch's items share in S3 (their stored image inputs) lives under this prefix, deleted
    together when the batch's keys go (``shared.predictions.retention``, ``batch:<id>``)."""
    return f"batches/{batch_id}/"


def batch_input_key(batch_id: str, name: str) -> str:
    return f"{batch_prefix(batch_id)}inputs/{name}"


@dataclass
class StoredObject:
    body: Iterator[bytes]
    content_type: str
    content_length: int


class ObjectNotFound(LookupError):
    pass


class StorageUnavailable(Exception):
    """Object storage could not be reached, or refused a write."""
