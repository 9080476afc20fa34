"""The Files API's store (``shared.storage.files.FileStore``) when a file's bytes go while a reader holds
its record (a DELETE racing a download, a batch's ``input_file``, a file input): the reader finds no file
instead of an error, and a DELETE takes the record before the bytes."""

from __future__ import annotations

import time
from types import SimpleNamespace

import fakeredis
import pytest

from shared.db import keys
from shared.predictions.retention import Janitor
from shared.storage.files import FileStore
from shared.storage.objects import ObjectNotFound, StoredObject, file_key
from worker.context import FileInputError, load_file_input

BASE_URL = "http://kiln.test"


class Objects:
    """In-memory object storage; ``deleted`` records, for each key deleted, whether its record was left."""

    def __init__(self, store: FileStore | None = None) -> None:
        self.objects: dict[str, bytes] = {}
        self.store = store
        self.deleted: list[tuple[str, bool]] = []

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def open(self, key: str) -> StoredObject:
        if key not in self.objects:
            raise ObjectNotFound(key)
        data = self.objects[key]
        return StoredObject(body=iter([data]), content_type="application/octet-stream", content_length=len(data))

    def delete(self, key: str) -> None:
        assert self.store is not None
        self.deleted.append((key, bool(self.store.redis.exists(keys.file(key.rpartition("/")[2])))))
        self.objects.pop(key, None)


@pytest.fixture
def store() -> FileStore:
    objects = Objects()
    store = FileStore(fakeredis.FakeRedis(), objects, retention_s=3600)  # type: ignore[arg-type]
    objects.store = store
    return store


def test_a_file_whose_bytes_went_under_its_record_is_none_to_every_reader(store: FileStore) -> None:
    record = store.create("me", "in.bin", "application/octet-stream", b"bytes", {})
    assert store.read(record.id, "me") == b"bytes"
    store.storage.objects.clear()  # type: ignore[attr-defined]
    assert store.get(record.id, "me") == record  # the record a reader found
    assert store.open(record) is None
    assert store.read(record.id, "me") is None
    prediction = SimpleNamespace(base_url=BASE_URL, tenant="me")
    with pytest.raises(FileInputError, match=f"file {record.id} does not exist or has expired"):
        load_file_input(f"{BASE_URL}/v1/files/{record.id}", prediction, store, None, max_bytes=100, timeout_s=1)  # type: ignore[arg-type]


def test_a_delete_takes_the_record_before_the_bytes(store: FileStore) -> None:
    record = store.create("me", "in.bin", "application/octet-stream", b"bytes", {})
    store.delete(record)
    assert store.storage.deleted == [(file_key(record.id), False)]  # type: ignore[attr-defined]
    assert store.get(record.id, "me") is None and not store.redis.zscore(keys.tenant_files("me"), record.id)


def test_retention_takes_the_record_before_the_bytes_at_the_files_expires_at(store: FileStore) -> None:
    """The record lived ``retention_s`` from the end of its upload, the janitor deleted the bytes at
    ``expires_at``: between the two, GET answered 200 for a file whose download was a 404."""
    record = store.create("me", "in.bin", "application/octet-stream", b"bytes", {})
    expires_ms = store.redis.pexpiretime(keys.file(record.id))
    assert expires_ms == int(record.expires_at.timestamp() * 1000)
    store.redis.zadd(keys.retention(), {f"file:{record.id}:me": time.time() - 1})
    Janitor(store.redis, store.storage).sweep()  # type: ignore[arg-type]
    assert store.storage.deleted == [(file_key(record.id), False)]  # type: ignore[attr-defined]
    assert store.get(record.id, "me") is None and not store.redis.zscore(keys.tenant_files("me"), record.id)
