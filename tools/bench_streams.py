"""Long requests against one API process: tenant A holds many SSE streams
while tenant B makes waited creates and reads; prints B's latencies, the 5xx count and how many
Redis connections the API holds.

Starts its own stack (redis-server, SeaweedFS, one API process, the sd2 GPU worker on the tiny
profile, the webhook worker). A's streams follow a prediction that waits at a step gate on the XL
queue, which no worker consumes here, so they stay open; B's predictions run on the sd2 worker.

Two rounds: A within its cap (``KILN_MAX_OPEN_STREAMS_PER_TENANT``, 20 by default: A holds 20 and
every further attempt is a 429), and, with the cap raised for the bench, A holding ``--streams``
(1,500 in the issue's report: 365 immediate 503s and 1,281 "Exception in ASGI application" lines
before the fix). The client runs on the same machine and competes with the stack for the CPU.
Usage: ``python -m tools.bench_streams [--streams 1500] [--creates 20] [--gets 300]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import redis

from deploy.devstack.servers import RedisServer, SeaweedS3Server, free_port
from tests.support import REPO_ROOT, wait_until
from tests.support.predictions import depth2img_input
from tests.support.stack import GPU_WORKER_ARGV, READY, WEBHOOK_WORKER_ARGV, Stack, stack_env, uvicorn_argv
from tests.support.tenants import new_token

SD2 = {"version": "kiln/sd2-depth2img", "input": depth2img_input(width=64, height=64, num_inference_steps=2)}
IMAGE = SD2["input"]["input_image"]
HELD = {"version": "kiln/ip-adapter-depth-xl", "input": {"prompt": "held", "input_image": IMAGE, "ip_image": IMAGE}}


def log(message: str) -> None:
    print(f"[bench-streams {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def hold_streams(base_url: str, token: str, prediction_id: str, count: int, opened: list[int]) -> None:
    """Open ``count`` streams and keep them open (until cancelled); ``opened`` gets each status."""
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(60, read=None)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:

        async def one() -> None:
            headers = {"Authorization": f"Bearer {token}"}
            try:
                async with client.stream("GET", f"/v1/predictions/{prediction_id}/stream", headers=headers) as r:
                    opened.append(r.status_code)
                    async for _ in r.aiter_lines():
                        pass
            except httpx.HTTPError:
                opened.append(0)

        await asyncio.gather(*(one() for _ in range(count)))


async def measure_b(base_url: str, token: str, creates: int, gets: int) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=90) as client:
        statuses, waited_s, get_ms = [], [], []
        last_id = None
        for _ in range(creates):
            started = time.perf_counter()
            response = await client.post("/v1/predictions", json=SD2, headers={"Prefer": "wait=5"})
            waited_s.append(time.perf_counter() - started)
            statuses.append(response.status_code)
            if response.status_code == 201:
                last_id = response.json()["id"]
        for _ in range(gets):
            started = time.perf_counter()
            response = await client.get(f"/v1/predictions/{last_id}" if last_id else "/v1/predictions")
            get_ms.append((time.perf_counter() - started) * 1000)
            statuses.append(response.status_code)
    return {"statuses": statuses, "waited_s": waited_s, "get_ms": get_ms}


async def round_(stack: Stack, token_a: str, token_b: str, held_id: str, streams: int, args: argparse.Namespace) -> str:
    opened: list[int] = []
    holder = asyncio.create_task(hold_streams(stack.base_url, token_a, held_id, streams, opened))
    deadline = time.monotonic() + 120
    while len(opened) < streams and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    with redis.Redis.from_url(stack.redis_url) as client:
        connections = len(client.client_list())
        pubsub = len(client.client_list(_type="pubsub"))
    b = await measure_b(stack.base_url, token_b, args.creates, args.gets)
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)
    ok = opened.count(200)
    refused = opened.count(429)
    b_statuses = b["statuses"]
    assert isinstance(b_statuses, list)
    server_errors = sum(1 for s in [*opened, *b_statuses] if s >= 500)
    get_ms, waited_s = b["get_ms"], b["waited_s"]
    assert isinstance(get_ms, list) and isinstance(waited_s, list)
    log(f"A's stream statuses {Counter(opened)}, B's {Counter(b_statuses)}")
    return (
        f"A asked {streams:>5} streams: {ok:>5} open, {refused:>5} x 429 | Redis clients {connections:>3} "
        f"(pub/sub {pubsub}) | B: {b_statuses.count(201)}/{args.creates} waited creates 201, "
        f"wait p50 {statistics.median(waited_s):.2f} s; GET p50 {statistics.median(get_ms):.1f} ms, "
        f"p99 {percentile(get_ms, 99):.1f} ms | 5xx: {server_errors}"
    )


def start(root: Path, weights_dir: Path, cap: int) -> Stack:
    (root / "logs").mkdir(parents=True)
    access_key, secret_key = "kiln-bench", secrets.token_hex(16)
    redis_server = RedisServer(root / "redis", password=secrets.token_urlsafe(12)).start()
    s3 = SeaweedS3Server(root / "s3", access_key, secret_key).start()
    port = free_port()
    env = stack_env(root, redis_server, s3, access_key, secret_key, weights_dir) | {
        "KILN_MAX_OPEN_STREAMS_PER_TENANT": str(cap),
        "KILN_RATE_LIMIT_PER_S": "100000",
        "KILN_RATE_LIMIT_BURST": "100000",
    }
    stack = Stack(
        base_url=f"http://127.0.0.1:{port}",
        tls_base_url="",
        tls_ca=root / "unused",
        env=env,
        redis=redis_server,
        s3=s3,
        logs=root / "logs",
    )
    try:
        stack.start("webhooks", WEBHOOK_WORKER_ARGV)
        stack.start("api", uvicorn_argv(port))
        stack.start("gpu-worker", GPU_WORKER_ARGV)
        worker_log = stack.logs / "gpu-worker.log"
        wait_until(lambda: worker_log.exists() and READY in worker_log.read_bytes(), 600, what="the GPU worker")
        wait_until(lambda: httpx.get(f"{stack.base_url}/health", timeout=2).status_code == 200, 60, what="the API")
    except BaseException:
        stop(stack)
        raise
    return stack


def stop(stack: Stack) -> None:
    stack.stop_all()
    stack.s3.stop()
    stack.redis.stop()


def run(args: argparse.Namespace, root: Path) -> list[str]:
    lines = []
    for label, cap, streams in (("within the cap", 20, 20 + args.refused), ("cap raised", args.streams, args.streams)):
        log(f"{label}: starting a stack (cap {cap})")
        stack = start(root / label.replace(" ", "-"), args.weights_dir, cap)
        try:
            _, token_a = new_token(stack.redis_url, "streamer")
            _, token_b = new_token(stack.redis_url, "waiter")
            held = httpx.post(
                f"{stack.base_url}/v1/predictions", json=HELD, headers={"Authorization": f"Bearer {token_a}"}
            ).json()
            line = asyncio.run(round_(stack, token_a, token_b, held["id"], streams, args))
            errors = (stack.logs / "api.log").read_text().count("Exception in ASGI application")
            lines.append(f"{label:>15}: {line} | API log: {errors} ASGI exceptions")
            log(lines[-1])
        finally:
            stop(stack)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1500, help="streams A asks for with the cap raised")
    parser.add_argument("--refused", type=int, default=100, help="attempts beyond the cap in the first round")
    parser.add_argument("--creates", type=int, default=10, help="B's Prefer: wait=5 creates per round")
    parser.add_argument("--gets", type=int, default=300, help="B's GETs per round")
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / ".kiln" / "weights")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-streams-"))
    try:
        print("\n".join(run(args, root)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
