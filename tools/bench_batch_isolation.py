"""Another tenant's speed while a large batch file is validated: ``python -m tools.bench_batch_isolation``.

Starts redis-server, SeaweedFS and one API process (no worker: nothing needs to run), then tenant
A uploads a JSONL file of ``--lines`` distinct create bodies (a prompt and seed per line, as users
send) and creates a batch from it, while tenant B sends ``GET /v1/predictions`` one after another.
Prints B's latencies (p50, p99, max) with A idle, then during A's validation, and how long A's
create took. The client shares the machine's CPUs with the stack.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from deploy.devstack.servers import RedisServer, SeaweedS3Server, free_port
from shared.storage.s3 import Storage
from tests.support import REPO_ROOT, wait_until
from tests.support.stack import TOKEN_A, Stack, stack_env, uvicorn_argv
from tests.support.tenants import new_token
from tools.chaos import _healthy, stop_stack

# What the API process is started with here: nothing the bench sends is refused for its rate or volume.
UNLIMITED = {
    "KILN_MAX_QUEUED_PER_TENANT": "1000000",
    "KILN_RATE_LIMIT_PER_S": "1000000",
    "KILN_RATE_LIMIT_BURST": "1000000",
}


def start_api(root: Path, settings: Mapping[str, str] = UNLIMITED) -> Stack:
    """redis-server, SeaweedFS and one API process (its ``settings`` added to the stack's), under ``root``."""
    (root / "logs").mkdir(parents=True)
    access_key, secret_key = "kiln-bench", secrets.token_hex(16)
    redis_server = RedisServer(root / "redis", appendonly=False).start()
    s3 = SeaweedS3Server(root / "s3", access_key, secret_key).start()
    port = free_port()
    env = stack_env(root, redis_server, s3, access_key, secret_key, REPO_ROOT / ".kiln" / "weights") | dict(settings)
    stack = Stack(f"http://127.0.0.1:{port}", "", root / "unused", env, redis_server, s3, root / "logs")
    Storage(stack.settings()).ensure_bucket()  # a worker would make it; none runs here
    stack.start("api", uvicorn_argv(port))
    wait_until(lambda: _healthy(stack), 240, what="the API's /health (SeaweedFS can be slow to start)")
    return stack


@contextmanager
def api_only(prefix: str, settings: Mapping[str, str] = UNLIMITED) -> Iterator[Stack]:
    """``start_api`` in a temporary folder, stopped and removed after."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    stack = start_api(root, settings)
    try:
        yield stack
    finally:
        stop_stack(stack)
        shutil.rmtree(root, ignore_errors=True)


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return f"n={len(ordered)} p50={statistics.median(ordered):.1f} ms p99={p99:.1f} ms max={ordered[-1]:.1f} ms"


def gets_until(client: httpx.Client, stop: threading.Event, seconds: float | None = None) -> list[float]:
    """Tenant B's GET /v1/predictions latencies (ms), one request at a time."""
    found, deadline = [], time.monotonic() + (seconds or 1e9)
    while not stop.is_set() and time.monotonic() < deadline:
        started = time.perf_counter()
        client.get("/v1/predictions").raise_for_status()
        found.append((time.perf_counter() - started) * 1000)
    return found


def jsonl(lines: int) -> bytes:
    body = {"model": "kiln/ip-adapter-depth-xl", "input": {"num_inference_steps": 1}}
    return "\n".join(
        json.dumps(body | {"input": body["input"] | {"prompt": f"a lighthouse, take {i}", "seed": i}})
        for i in range(lines)
    ).encode()


def measure(stack: Stack, lines: int, idle_s: float) -> None:
    b_token = new_token(stack.redis_url, "bench-b")[1]
    a = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=900)
    b = httpx.Client(base_url=stack.base_url, headers={"Authorization": f"Bearer {b_token}"}, timeout=60)
    with a, b:
        for _ in range(3):
            b.post("/v1/predictions", json={"version": "kiln/ip-adapter-depth-xl", "input": {"prompt": "b"}})
        upload = a.post("/v1/files", files={"content": ("b.jsonl", jsonl(lines), "application/jsonl")})
        upload.raise_for_status()
        idle = gets_until(b, threading.Event(), idle_s)
        print(f"B alone:                 {percentiles(idle)}", flush=True)
        done, during, took = threading.Event(), [], [0.0]

        def create() -> None:
            started = time.monotonic()
            a.post("/v1/batches", json={"input_file": upload.json()["urls"]["get"]}).raise_for_status()
            took[0] = time.monotonic() - started
            done.set()

        creator = threading.Thread(target=create)
        creator.start()
        during = gets_until(b, done)
        creator.join()
        print(f"B while A validates:     {percentiles(during)}", flush=True)
        print(f"A's {lines:,}-line batch accepted in {took[0]:.1f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    with api_only("kiln-isolation-") as stack:
        measure(stack, args.lines, args.idle_seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
