"""Batch files as users write them, for ``make bench`` and ``tools.profile_batch``: every line its own.

A real batch file's lines differ: each has its own prompt and seed; most point at one reference
image uploaded once (the Files API), a few hundred at images on the user's own web server, a few
carry a small image inline as a data URI. ``distinct_lines`` writes such a file; ``ImageURLServer``
is the web server (loopback, a different PNG at each path, the requests counted). A stack that
fetches from it needs ``KILN_IMAGE_FETCH_ALLOW_PRIVATE=true``.

``identical_lines`` is the old measure (one line repeated): the intake checks such a file's line
once and shares it, so its rate says nothing about real files and is reported apart, labelled.
"""

from __future__ import annotations

import base64
import http.server
import io
import random
import threading
from collections.abc import Sequence
from functools import cache

import orjson
from PIL import Image

MODEL = "kiln/ip-adapter-depth-xl"
# Of every 1,000 lines: this many name a URL of the image server, this many a data URI; the rest the upload.
URL_LINES_PER_1000 = 20
DATA_LINES_PER_1000 = 10
# Distinct image URLs and data URIs across the file.
DISTINCT_URLS = 300
DISTINCT_DATA_URIS = 50
SUBJECTS = ("a lighthouse", "a red fox", "an old tram", "a glass teapot", "a mountain hut", "a koi pond")
STYLES = ("at dusk", "in fog", "watercolour", "35mm photo", "isometric", "under snow", "neon-lit")


@cache
def png(seed: int, side: int = 64) -> bytes:
    """A small noisy PNG, different for each ``seed``."""
    image = Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(seed: int) -> str:
    """A tiny (8x8) PNG as a data URI: small enough to stay inline in the record."""
    return "data:image/png;base64," + base64.b64encode(png(10_000 + seed, 8)).decode()


def solid_png(index: int, side: int = 64) -> bytes:
    """A PNG of one colour, its own for each ``index`` (up to 2**24): a few hundred bytes, decoded at the full
    ``side`` like any image of that size."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), tuple(index.to_bytes(3, "big"))).save(buffer, format="PNG")
    return buffer.getvalue()


def solid_data_uri(index: int) -> str:
    return "data:image/png;base64," + base64.b64encode(solid_png(index % 2**24)).decode()


def create_input(index: int, ip_image: str | None = None) -> dict[str, object]:
    """A create's input as a user sends one: its own prompt, seed and structure image (a 64x64 data URI), and
    its own image prompt unless ``ip_image`` is given (a batch's one style reference)."""
    return {
        "prompt": prompt(index),
        "seed": index,
        "input_image": solid_data_uri(2 * index),
        "ip_image": ip_image or solid_data_uri(2 * index + 1),
        "num_inference_steps": 1,
    }


def prompt(index: int) -> str:
    rng = random.Random(index)
    return f"{rng.choice(SUBJECTS)}, {rng.choice(STYLES)}, study {index}, detailed, soft light"


def distinct_lines(count: int, uploaded_url: str, url_of: Sequence[str]) -> list[bytes]:
    """``count`` create bodies, each with its own prompt and seed; most reference ``uploaded_url``,
    ``URL_LINES_PER_1000`` in 1,000 one of ``url_of`` (cycling), ``DATA_LINES_PER_1000`` a data URI."""
    lines = []
    for index in range(count):
        slot = index % 1000
        if slot < URL_LINES_PER_1000 and url_of:
            image = url_of[(index // 1000 * URL_LINES_PER_1000 + slot) % len(url_of)]
        elif slot < URL_LINES_PER_1000 + DATA_LINES_PER_1000:
            image = data_uri(index % DISTINCT_DATA_URIS)
        else:
            image = uploaded_url
        body = {
            "model": MODEL,
            "input": {
                "prompt": prompt(index),
                "seed": index,
                "input_image": image,
                "ip_image": uploaded_url,
                "num_inference_steps": 1,
            },
        }
        lines.append(orjson.dumps(body))
    return lines


def urls_used(count: int, available: int = DISTINCT_URLS) -> int:
    """How many distinct image URLs ``distinct_lines(count, ...)`` names, ``available`` of them given."""
    url_lines = count // 1000 * URL_LINES_PER_1000 + min(count % 1000, URL_LINES_PER_1000)
    return min(available, url_lines)


def identical_lines(count: int, uploaded_url: str) -> list[bytes]:
    """One line, ``count`` times: what ``make bench`` measured before (labelled apart now)."""
    body = {
        "model": MODEL,
        "input": {"prompt": "bench", "input_image": uploaded_url, "ip_image": uploaded_url, "num_inference_steps": 1},
    }
    return [orjson.dumps(body)] * count


class _Server(http.server.ThreadingHTTPServer):
    # A web server's usual listen backlog: the standard library's 5 drops connections made at once
    # (each dropped one waits a second for its SYN to be sent again).
    request_queue_size = 128
    daemon_threads = True


class ImageURLServer:
    """Loopback HTTP server: ``GET /img/<n>.png`` answers a PNG of its own for each ``n``; counts requests."""

    def __init__(self) -> None:
        self.hits = 0
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.port = self._server.server_address[1]

    def urls(self, count: int = DISTINCT_URLS) -> list[str]:
        return [f"http://127.0.0.1:{self.port}/img/{n}.png" for n in range(count)]

    def __enter__(self) -> ImageURLServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                name = self.path.rsplit("/", 1)[-1].removesuffix(".png")
                if not self.path.startswith("/img/") or not name.isdigit():
                    self.send_error(404)
                    return
                body = png(int(name))
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        return Handler
