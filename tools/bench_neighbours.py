"""Another tenant's speed while one tenant abuses the API: ``python -m tools.bench_neighbours``.

HOSTILE.md asks that while one tenant abuses a surface, another's ``GET`` p99 stays under 100 ms. This
starts redis-server, SeaweedFS and one API process (no worker: nothing needs to run; image URLs on
loopback allowed), then, for each abuse in ``--abuses``, tenant B sends ``GET /v1/predictions`` one
after another, first with A idle and then while A, from ``--threads`` threads, keeps:

- ``slow-urls``: creating predictions whose image URL trickles a byte a second (each create holds an
  intake thread until ``KILN_IMAGE_FETCH_TIMEOUT_S`` ends it with a 422);
- ``uploads``: uploading files of ``--upload-mb`` (the default cap, 100 MB), distinct bytes each;
- ``downloads``: downloading such a file;
- ``creates``: ``make bench``'s single creates (``tools.bench.single_body``: a distinct prompt, seed and
  images each).

A is a new token for each abuse, with the default rate limits (``KILN_RATE_LIMIT_PER_S``, ``_BURST``): what
any tenant may do; B's token has them raised, to read as fast as it can. Prints B's latencies (p50, p99,
max) alone and during each abuse, and what A got done (its answers, counted). A's client runs in a process
of its own, so its work never holds the interpreter lock B's client measures with. The client
shares the machine's CPUs with the stack (on a 2-core machine, A's own client takes a share of them).
The stream and batch file abuses have their own benches (``tools.bench_streams``,
``tools.bench_batch_isolation``).
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

import httpx

from tests.support.stack import Stack
from tests.support.tenants import new_token
from tools.bench import SINGLE_PATH, single_body
from tools.bench_batch_isolation import api_only, gets_until, percentiles

ABUSES = ("slow-urls", "uploads", "downloads", "creates")


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Answers every GET with a PNG's headers, then a byte a second until the client goes."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            while not self.server.stopping.is_set():  # type: ignore[attr-defined]
                self.wfile.write(b"\x89")
                self.wfile.flush()
                time.sleep(1)
        except OSError:
            pass

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def trickling_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Trickle)
    server.daemon_threads = True
    server.stopping = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.stopping.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()


def outcome(response: httpx.Response) -> str:
    """A response's status, and for a refusal what it said."""
    if response.is_success:
        return str(response.status_code)
    return f"{response.status_code} {response.json().get('detail', '')[:80]}"


def abuse_actions(a: httpx.Client, abuse: str, slow_url: str, upload_bytes: int) -> Callable[[int], str]:
    """What one of A's threads does, its ``n``-th time: returns the outcome to count."""
    if abuse == "slow-urls":

        def act(n: int) -> str:
            body = {
                "version": "kiln/sd2-depth2img",
                "input": {"prompt": f"slow {n}", "input_image": f"{slow_url}/{n}.png"},
            }
            return outcome(a.post("/v1/predictions", json=body))

        return act
    if abuse == "creates":

        def act(n: int) -> str:
            return outcome(a.post(SINGLE_PATH, content=single_body(n), headers={"Content-Type": "application/json"}))

        return act
    payload = bytearray(os.urandom(upload_bytes))
    if abuse == "uploads":

        def act(n: int) -> str:
            content = bytes(payload[:8] + n.to_bytes(8, "big") + payload[16:])  # distinct bytes each upload
            return outcome(a.post("/v1/files", files={"content": (f"{n}.bin", content, "application/octet-stream")}))

        return act
    uploaded = a.post("/v1/files", files={"content": ("big.bin", bytes(payload), "application/octet-stream")})
    uploaded.raise_for_status()
    url = f"/v1/files/{uploaded.json()['id']}/download"

    def act(n: int) -> str:
        with a.stream("GET", url) as response:
            for _ in response.iter_bytes(1 << 20):
                pass
            return str(response.status_code)

    return act


def abuse(
    base_url: str, token: str, abuse: str, args: argparse.Namespace, slow_url: str, started: Event, stop: Event
) -> Counter[str]:
    """A's ``args.threads`` threads doing ``abuse`` until ``stop``; the outcomes of A's requests, counted."""
    outcomes, lock, counter = Counter[str](), threading.Lock(), iter(range(10**9))
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as a:
        act = abuse_actions(a, abuse, slow_url, args.upload_mb << 20)

        def keep_abusing() -> None:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                try:
                    result = act(n)
                except httpx.HTTPError as exc:
                    result = type(exc).__name__
                with lock:
                    outcomes[re.sub(r"https?://\S+", "<url>", result)] += 1

        threads = [threading.Thread(target=keep_abusing, daemon=True) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        started.set()
        for thread in threads:
            thread.join()
    return outcomes


def _abuse_process(results: Queue, *arguments: Any) -> None:
    results.put(abuse(*arguments))


def measure(stack: Stack, name: str, args: argparse.Namespace, slow_url: str) -> None:
    """B's latencies alone, then while A abuses: A runs in a process of its own, so that its client's work
    (100 MB bodies built and sent) never holds the interpreter lock that B's client measures with."""
    # B reads as fast as it can, past the default rate limit: its own token's limits are raised.
    b_token = new_token(stack.redis_url, "bench-b", rate_limit_per_s=1e6, rate_limit_burst=10**6)[1]
    a_token = new_token(stack.redis_url, "bench-a")[1]
    with httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {b_token}"}, timeout=60) as b:
        for i in range(3):
            b.post("/v1/predictions", json={"version": "kiln/ip-adapter-depth-xl", "input": {"prompt": f"b {i}"}})
        alone = gets_until(b, threading.Event(), args.idle_seconds)
        context = multiprocessing.get_context("fork")
        started, stop, results = context.Event(), context.Event(), context.Queue()
        process = context.Process(
            target=_abuse_process, args=(results, stack.base_url, a_token, name, args, slow_url, started, stop)
        )
        process.start()
        started.wait(600)  # A's threads started (a download first uploads its file)
        time.sleep(1)  # A's requests under way before B measures
        during = gets_until(b, threading.Event(), args.seconds)
        stop.set()
        outcomes = results.get(timeout=120)
        process.join(timeout=30)
    print(f"{name}:", flush=True)
    print(f"  B alone:        {percentiles(alone)}", flush=True)
    print(f"  B during abuse: {percentiles(during)}", flush=True)
    print(f"  A's requests ({args.threads} threads, {args.seconds + 1:.0f} s): {dict(outcomes)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--abuses", default=",".join(ABUSES), help=f"some of {','.join(ABUSES)}")
    parser.add_argument("--threads", type=int, default=16, help="A's concurrent requests")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long B measures during each abuse")
    parser.add_argument("--idle-seconds", type=float, default=3.0)
    parser.add_argument("--upload-mb", type=int, default=100)
    args = parser.parse_args()
    abuses = args.abuses.split(",")
    if unknown := set(abuses) - set(ABUSES):
        parser.error(f"unknown abuses: {', '.join(sorted(unknown))}")
    # A abuses within the default rate limits: what one tenant's token may do.
    with api_only("kiln-neighbours-", {"KILN_IMAGE_FETCH_ALLOW_PRIVATE": "true"}) as stack, trickling_server() as url:
        for abuse in abuses:
            measure(stack, abuse, args, url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
