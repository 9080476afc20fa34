"""A stand-in for the Files API's store in submission checks: uploaded files by id, read in small chunks."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace


class UploadedFiles:
    """Uploaded files by id: ``(tenant, bytes, size)`` (a size other than the bytes' stands for a large
    file); ``opened`` records the id of every read, which yields 16-byte chunks."""

    def __init__(self, files: Mapping[str, tuple[str, bytes, int]]) -> None:
        self.files = dict(files)
        self.opened: list[str] = []

    def get(self, file_id: str, tenant: str) -> SimpleNamespace | None:
        entry = self.files.get(file_id)
        if entry is None or entry[0] != tenant:
            return None
        return SimpleNamespace(id=file_id, data=entry[1], size=entry[2])

    def open(self, record: SimpleNamespace) -> SimpleNamespace:
        self.opened.append(record.id)
        return SimpleNamespace(body=iter([record.data[i : i + 16] for i in range(0, len(record.data), 16)]))
