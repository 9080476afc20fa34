"""Image inputs: scheme checks, data URIs, header inspection before decoding, bounded fetches."""

from __future__ import annotations

import base64
import http.server
import threading
from functools import partial

import pytest
from PIL import Image

from shared.inputs.images import (
    ImageInputError,
    check_uri_scheme,
    decode_data_uri,
    decode_image,
    fetch_url,
    inspect_image,
)
from shared.settings import Settings
from tests.support import data_uri, png_bytes, png_claiming_size


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


@pytest.mark.parametrize("cap", [5000, 5001, 5002])
def test_a_data_uri_of_exactly_the_byte_cap_is_read_and_one_byte_more_is_not(cap):
    """Whatever the cap's remainder by 3 (base64's padding is no data; the 20 MiB default leaves 2)."""
    at_cap = base64.b64encode(bytes(cap)).decode()
    assert len(decode_data_uri(f"data:image/png;base64,{at_cap}", cap)) == cap
    past = base64.b64encode(bytes(cap + 1)).decode()
    with pytest.raises(ImageInputError, match=f"larger than {cap} bytes"):
        decode_data_uri(f"data:image/png;base64,{past}", cap)


def test_the_pixel_cap_goes_no_higher_than_what_pillow_decodes():
    """A cap above Pillow's own bomb limit would refuse images under it as bombs: the setting stops there,
    and an image at it is read."""
    highest = Settings.model_fields["image_max_pixels"].metadata
    assert any(getattr(bound, "le", None) == 2 * Image.MAX_IMAGE_PIXELS for bound in highest)
    assert inspect_image(png_claiming_size(13377, 13377), 2 * Image.MAX_IMAGE_PIXELS).width == 13377
    with pytest.raises(ValueError, match="image_max_pixels"):
        Settings(_env_file=None, image_max_pixels=2 * Image.MAX_IMAGE_PIXELS + 1)
