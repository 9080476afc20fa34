"""``make bench``'s downloads section: files served by the API from S3, as clients fetch outputs.

One token uploads ``FILES`` distinct small PNGs (random pixels, so each is its own object), then
``processes`` x ``threads`` keep-alive clients of that token fetch them in turn
(``GET /v1/files/{id}/download``: the path outputs and stored inputs take too, ``api.signed_access``)
for ``seconds``, after a warm-up: downloads per second and their p99 latency.
"""

from __future__ import annotations

import http.client
import io
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from tools.client_processes import percentile, run_clients

FILES = 200
SIDE = 64


def distinct_png(seed: int) -> bytes:
    """A PNG of random pixels, its own for each seed."""
    noise = random.Random(seed).randbytes(SIDE * SIDE * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (SIDE, SIDE), noise).save(out, format="PNG")
    return out.getvalue()


def upload(base_url: str, token: str, count: int = FILES) -> list[str]:
    """``count`` distinct PNGs uploaded with ``token``: their download paths."""
    paths = []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for n in range(count):
            made = client.post("/v1/files", files={"content": (f"bench-{n}.png", distinct_png(n), "image/png")})
            made.raise_for_status()
            paths.append(f"/v1/files/{made.json()['id']}/download")
    return paths


def _client_thread(base_url: str, token: str, paths: list[str], deadline: float, found: list[list[float]]) -> None:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    latencies = []
    for path in itertools.cycle(paths):
        if time.monotonic() >= deadline:
            break
        sent = time.monotonic()
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path} answered {response.status}: {payload[:300]!r}")
        latencies.append(time.monotonic() - sent)
    connection.close()
    found.append(latencies)


def _client_process(
    base_url: str, token: str, paths: list[str], offset: int, seconds: float, threads: int, start: Any, out: Any
) -> None:
    start.wait()
    deadline = time.monotonic() + seconds
    found: list[list[float]] = []
    # Each thread starts at its own file: the clients do not fetch the same file at the same moment.
    own = [paths[(offset + n * 7) % len(paths) :] + paths[: (offset + n * 7) % len(paths)] for n in range(threads)]
    workers = [threading.Thread(target=_client_thread, args=(base_url, token, mine, deadline, found)) for mine in own]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put([s for latencies in found for s in latencies] if len(found) == threads else None)


@dataclass(frozen=True)
class Downloads:
    rate: float
    p99_ms: float
    clients: int


def _run(base_url: str, token: str, paths: list[str], seconds: float, processes: int, threads: int) -> Downloads:
    args = [(base_url, token, paths, index * 101, seconds, threads) for index in range(processes)]
    results, elapsed = run_clients(_client_process, args, seconds)
    if any(found is None for found in results):
        raise RuntimeError("a download client failed; see its traceback above")
    latencies = [s * 1000 for found in results for s in found]
    return Downloads(len(latencies) / elapsed, percentile(latencies, 99), processes * threads)


def measure(
    base_url: str, token: str, seconds: float, processes: int, threads: int, log: Callable[[str], None]
) -> Downloads:
    log(f"downloads: uploading {FILES} distinct files")
    paths = upload(base_url, token)
    _run(base_url, token, paths, min(3.0, seconds), processes, threads)  # warm-up
    found = _run(base_url, token, paths, seconds, processes, threads)
    log(f"downloads: {found.rate:,.0f}/s, p99 {found.p99_ms:.1f} ms")
    return found


def rows(found: Downloads) -> list[tuple[str, str, str, str]]:
    label = f"downloads/s of distinct {SIDE}x{SIDE} PNGs through the API, one token ({found.clients} clients)"
    return [(label, f"{found.rate:,.0f}", "", ""), ("download p99 (ms)", f"{found.p99_ms:.1f}", "", "")]
