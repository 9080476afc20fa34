"""Image files and stand-in file/storage services for the image-intake tests."""

from __future__ import annotations

import io
from types import SimpleNamespace

from PIL import Image

from tests.support import png_bytes

BASE_URL = "http://kiln.test"
# The one Files-API file that exists in ``FakeFiles``, tenant "a"'s.
OURS = f"{BASE_URL}/v1/files/{'a' * 26}"


def rotated_jpeg(width: int = 40, height: int = 20) -> bytes:
    """A ``width`` x ``height`` JPEG whose EXIF says: turn me 90 degrees (orientation 6) to view it."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (width, height), "teal").save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def flat_png(size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


class FakeFiles:
    """Only ``OURS`` exists (an 8x8 PNG), and only for tenant "a"."""

    def get(self, file_id: str, tenant: str) -> object | None:
        found = (file_id, tenant) == (OURS.rsplit("/", 1)[1], "a")
        return SimpleNamespace(size=len(png_bytes(8, 8))) if found else None

    def open(self, record: object) -> SimpleNamespace:
        return SimpleNamespace(body=iter([png_bytes(8, 8)]))


class FakeStorage:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        # (source, key) of each server-side copy.
        self.copies: list[tuple[str, str]] = []

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def copy(self, source: str, key: str) -> None:
        self.copies.append((source, key))
        self.objects[key] = self.objects.get(source, b"copied")
