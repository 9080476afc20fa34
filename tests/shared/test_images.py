"""Image inputs: scheme checks, data URIs, header inspection before decoding, bounded fetches."""

from __future__ import annotations

import http.server
import threading
from functools import partial

import pytest

from shared.inputs.images import (
    ImageInputError,
    check_uri_scheme,
    decode_data_uri,
    decode_image,
    fetch_url,
    inspect_image,
)
from tests.support import data_uri, png_bytes


@pytest.mark.parametrize(
    "uri", ["file:///etc/passwd", "gopher://x/", "ftp://host/a.png", "/relative.png", "http:///nohost"]
)
def test_only_http_https_and_data_uris(uri):
    with pytest.raises(ImageInputError):
        check_uri_scheme(uri)


def test_data_uri_round_trip_and_limits():
    data = png_bytes(8, 8)
    assert decode_data_uri(data_uri(data), max_bytes=10_000) == data
    with pytest.raises(ImageInputError, match="larger than 10 bytes"):
        decode_data_uri(data_uri(data), max_bytes=10)
    with pytest.raises(ImageInputError, match="base64"):
        decode_data_uri("data:image/png;base64,@@@", max_bytes=10_000)
    with pytest.raises(ImageInputError, match="malformed"):
        decode_data_uri("data:nocomma", max_bytes=10_000)


def test_inspect_reads_format_and_size_and_applies_the_pixel_cap():
    info = inspect_image(png_bytes(30, 20), max_pixels=10_000)
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)
    with pytest.raises(ImageInputError, match="more than 100 pixels"):
        inspect_image(png_bytes(30, 20), max_pixels=100)
    with pytest.raises(ImageInputError, match="not a readable image"):
        inspect_image(b"hello", max_pixels=100)


def test_decode_returns_rgb():
    image = decode_image(png_bytes(5, 4), max_pixels=100)
    assert (image.mode, image.size) == ("RGB", (5, 4))


@pytest.fixture
def http_server():
    """A loopback server: /ok a PNG, /big a large body, /redirect a 302 to /ok, /loop a 302 to itself."""
    body = png_bytes(4, 4)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path in ("/redirect", "/loop"):
                self.send_response(302)
                self.send_header("Location", "/ok" if self.path == "/redirect" else "/loop")
                self.end_headers()
                return
            payload = body if self.path == "/ok" else b"x" * 50_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", body
    server.shutdown()


def test_fetch_url_is_bounded_and_checks_every_redirect(http_server):
    base, body = http_server
    fetch = partial(fetch_url, timeout_s=5, max_bytes=10_000, allow_private=True)
    assert fetch(f"{base}/ok") == body
    assert fetch(f"{base}/redirect") == body
    with pytest.raises(ImageInputError, match="larger than 10000 bytes"):
        fetch(f"{base}/big")
    with pytest.raises(ImageInputError, match="more than 5 redirects"):
        fetch(f"{base}/loop")


def test_fetch_url_refuses_private_addresses_unless_allowed(http_server):
    base, _ = http_server
    with pytest.raises(ImageInputError, match="loopback"):
        fetch_url(f"{base}/ok", timeout_s=5, max_bytes=10_000, allow_private=False)


def test_a_redirect_to_a_private_address_is_refused(http_server, monkeypatch):
    """The first hop is allowed (treated as public here); the redirect target is checked again."""
    base, _ = http_server
    import shared.security.ssrf as ssrf

    real = ssrf.forbidden_reason
    first_hop = {"allowed": True}

    def only_first_hop_public(address, allow_private=False):
        if first_hop.pop("allowed", False):
            return None
        return real(address, allow_private)

    monkeypatch.setattr(ssrf, "forbidden_reason", only_first_hop_public)
    with pytest.raises(ImageInputError, match="loopback"):
        fetch_url(f"{base}/redirect", timeout_s=5, max_bytes=10_000, allow_private=False)


def test_a_url_that_never_answers_times_out():
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        with pytest.raises(ImageInputError, match=r"timed out after 0\.5 s"):
            fetch_url(
                f"http://127.0.0.1:{silent.getsockname()[1]}/x.png", timeout_s=0.5, max_bytes=10_000, allow_private=True
            )
    finally:
        silent.close()
