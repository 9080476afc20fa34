"""Image servers on loopback for the image-URL tests: one that serves (or redirects, or trickles)
and counts requests, over plain http or TLS (a trustme CA), and a listener that accepts connections
and never answers."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest
import trustme

import shared.security.ssrf
from tests.support import png_bytes

# A trickling server sends one byte this often, each within any per-read timeout.
TRICKLE_INTERVAL_S = 0.2
TRICKLE_BYTES = 150


class _Server(http.server.ThreadingHTTPServer):
    # A web server's usual listen backlog (the standard library's 5 drops connections a batch's
    # fetches make at once: each dropped one waits a second for its SYN to be sent again).
    request_queue_size = 128
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class ImageServer:
    """Serves a PNG (or ``body``) on every GET, or redirects to ``redirect_to``, or trickles a byte at
    a time; over TLS with a certificate for ``host`` from ``tls`` when given."""

    def __init__(
        self, host: str, trickle: bool = False, *, tls: trustme.CA | None = None, body: bytes | None = None
    ) -> None:
        self.host = host
        self.trickle = trickle
        self.redirect_to: str | None = None
        self.hits = 0
        # The Host header of each request, in order.
        self.hosts: list[str | None] = []
        self.body = png_bytes(64, 64) if body is None else body
        self._server = (_Server6 if ":" in host else _Server)((host, 0), self._handler())
        self.scheme = "http"
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.issue_cert(host).configure_cert(context)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self.port = self._server.server_address[1]

    def url(self, path: str, host: str | None = None) -> str:
        """``path`` on this server, named by ``host`` (one resolving to its address) or its address."""
        host = host or (f"[{self.host}]" if ":" in self.host else self.host)
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> ImageServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits += 1
                server.hosts.append(self.headers.get("Host"))
                if server.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", server.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                if not server.trickle:
                    self.wfile.write(server.body)
                    return
                for byte in server.body[:TRICKLE_BYTES]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(TRICKLE_INTERVAL_S)

            def log_message(self, *args):
                pass

        return Handler


@dataclass
class Listener:
    port: int


@contextmanager
def silent_listener() -> Iterator[Listener]:
    """A loopback port whose connections the kernel accepts (backlog) and nobody ever reads or answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield Listener(sock.getsockname()[1])
    finally:
        sock.close()


def trust_in_the_guard(monkeypatch: pytest.MonkeyPatch, ca: trustme.CA) -> None:
    """The SSRF guard's client trusts ``ca`` (as a deployment's trusts the public CAs); the rest of
    the guard is the real one."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    monkeypatch.setattr(
        shared.security.ssrf,
        "pinned_client",
        lambda timeout_s: httpx.Client(verify=context, timeout=timeout_s, follow_redirects=False, trust_env=False),
    )
