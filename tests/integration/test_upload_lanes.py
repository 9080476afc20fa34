"""Uploads (``POST /v1/files``) hold nothing of another token's (``api.lanes``): a token has at most
``KILN_UPLOADS_PER_TOKEN`` uploads under way, its further ones wait unread, and another token's upload is
answered meanwhile; and a file part is kept in memory as it arrives, never a hop per chunk to the threads
reads run on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import starlette.datastructures

from tests.support.predictions import app_for
from tests.support.stack import TOKEN_A, TOKEN_B, Stack, extra_api

pytestmark = pytest.mark.integration

BOUNDARY = "kiln-upload-lanes"


@pytest.fixture
def api_url(stack: Stack) -> Iterator[str]:
    """An API process whose tokens have two uploads each."""
    with extra_api(stack, {"KILN_UPLOADS_PER_TOKEN": "2", "KILN_RATE_LIMIT_BURST": "1000"}, "api-uploads") as url:
        yield url


def held_upload(release: threading.Event) -> Iterator[bytes]:
    """A multipart body that sends its first bytes, then waits for ``release`` before the rest."""
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="content"; filename="slow.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield b"x" * 1024
    release.wait(60)
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_a_tokens_uploads_past_its_share_wait_and_another_tokens_upload_is_answered(api_url) -> None:
    release = threading.Event()
    answers: dict[str, int] = {}

    def upload(name: str, token: str, content: object, headers: dict[str, str] | None = None) -> None:
        with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            if headers is None:
                response = client.post("/v1/files", files={"content": (f"{name}.bin", b"quick", "text/plain")})
            else:
                response = client.post("/v1/files", content=content, headers=headers)  # type: ignore[arg-type]
        answers[name] = response.status_code

    multipart = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    held = [
        threading.Thread(target=upload, args=(f"held-{i}", TOKEN_A, held_upload(release), multipart), daemon=True)
        for i in range(2)
    ]
    for thread in held:
        thread.start()
    time.sleep(0.5)  # both under way, each holding one of A's two slots
    third = threading.Thread(target=upload, args=("a-third", TOKEN_A, None), daemon=True)
    third.start()
    upload("b", TOKEN_B, None)  # B's upload is answered while A's slots are held
    assert answers == {"b": 201}
    third.join(timeout=2)
    assert "a-third" not in answers, "A's third upload waits for one of its own slots"
    release.set()
    for thread in (*held, third):
        thread.join(timeout=30)
    assert answers == {"held-0": 201, "held-1": 201, "a-third": 201, "b": 201}


def test_a_large_upload_is_kept_in_memory_without_a_thread_hop_per_chunk(stack, monkeypatch) -> None:
    """Starlette spools a file part past 1 MiB to disk, each chunk written (and the whole read back) on the
    threads reads run on; an upload is read into memory whole anyway, so it stays there as it arrives."""
    hops: list[str] = []
    original = starlette.datastructures.run_in_threadpool

    async def counted(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(starlette.datastructures, "run_in_threadpool", counted)
    data = bytes(range(256)) * (6 * 4096)  # 6 MiB
    with app_for(stack) as app:
        created = app.post(
            "/v1/files",
            files={"content": ("big.bin", data, "application/octet-stream")},
            headers={"Authorization": f"Bearer {TOKEN_A}"},
        )
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["size"] == len(data)
        downloaded = app.get(f"/v1/files/{record['id']}/download", headers={"Authorization": f"Bearer {TOKEN_A}"})
        assert downloaded.content == data
    assert hops == [], f"{len(hops)} thread hops: {hops[:5]}"
