"""Every guarded request ends within its timeout, whatever the peer does: httpx's timeouts bound each read
alone, so a peer trickling its answer a byte at a time (each byte inside the read timeout) used to hold a
webhook thread or an image fetch for as long as it trickled (``shared.security.ssrf.Deadline``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from shared.inputs.images import ImageInputError, fetch_url
from shared.security.ssrf import guarded_request
from shared.settings import Settings
from shared.webhooks.delivery import SignedBody, post_signed
from shared.webhooks.outbox import Delivery

TIMEOUT_S = 0.5
# The peer's trickle: a byte this often (well inside the read timeout) for this long.
BYTE_EVERY_S = 0.1
TRICKLE_S = 4.0


@contextmanager
def peer(trickle_head: bool) -> Iterator[str]:
    """An HTTP peer on loopback that reads a request, then answers at once or trickles its status line and
    headers; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head = b"HTTP/1.1 200 OK\r\nX-Slow: "
            try:
                conn.sendall(head)
                ends = time.monotonic() + (TRICKLE_S if trickle_head else 0)
                while time.monotonic() < ends:
                    conn.sendall(b"a")
                    time.sleep(BYTE_EVERY_S)
                conn.sendall(b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                pass  # the client cut the connection

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        listener.close()


def test_a_trickled_answer_is_cut_off_at_the_timeout_as_a_timeout() -> None:
    with peer(trickle_head=True) as url:
        started = time.monotonic()
        request = guarded_request("GET", url, allow_private=True, timeout_s=TIMEOUT_S)
        with pytest.raises(httpx.TimeoutException), request:
            pass
        took = time.monotonic() - started
    assert TIMEOUT_S <= took < TIMEOUT_S + 1.0


def test_a_prompt_answer_is_read_whole_and_not_cut_afterwards() -> None:
    with peer(trickle_head=False) as url:
        with guarded_request("GET", url, allow_private=True, timeout_s=TIMEOUT_S) as response:
            assert response.status_code == 200
            assert response.read() == b"ok"
        # A deadline that came after its request ended cuts nothing (the next request is unaffected).
        time.sleep(TIMEOUT_S + 0.2)
        with guarded_request("GET", url, allow_private=True, timeout_s=TIMEOUT_S) as response:
            assert response.read() == b"ok"


def test_a_webhook_attempt_to_a_trickling_receiver_is_recorded_as_timed_out() -> None:
    settings = Settings(webhook_timeout_s=TIMEOUT_S, webhook_allow_private=True)
    with peer(trickle_head=True) as url:
        delivery = Delivery("msg_1", "p1", "completed", url, "{}", time.time(), retry=True)
        started = time.monotonic()
        result = post_signed(delivery, SignedBody("{}", ["whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]), settings)
    assert time.monotonic() - started < TIMEOUT_S + 1.0
    assert not result.succeeded and not result.stop
    assert result.outcome == f"timed out after {TIMEOUT_S:g} s"


def test_an_image_fetch_from_a_trickling_server_fails_naming_the_timeout() -> None:
    with peer(trickle_head=True) as url:
        started = time.monotonic()
        with pytest.raises(ImageInputError, match="timed out after"):
            fetch_url(url, timeout_s=TIMEOUT_S, max_bytes=1000, allow_private=True)
    assert time.monotonic() - started < TIMEOUT_S + 1.0
