"""``make chaos``: submit many tiny predictions with webhooks while the GPU worker is SIGKILLed twice
and Redis is restarted once, then count what was lost.

It starts its own stack on free ports (redis-server with AOF, SeaweedFS, the API, one GPU worker on
the tiny profile, one webhook worker, the same way the integration tests do) and a verifying
webhook receiver, and prints one line:

    submitted=N terminal=.. succeeded=.. failed=.. lost=.. completed_twice=.. webhooks_missing=.. refused=..
    crashes=.. seconds=..       (on one line)

- lost: accepted (201) but not terminal at the end, or missing from Redis;
- completed_twice: predictions with more than one distinct ``completed`` delivery (webhook-id);
- webhooks_missing: terminal predictions whose ``completed`` webhook never arrived;
- refused: submissions never accepted, even after retrying (same Idempotency-Key) for a while;
- crashes: stack processes that exited on their own (restarted only with ``--supervise``).

The numbers are the result: the exit status is 0 unless the harness itself breaks.
Usage: ``python -m tools.chaos [--count 2000] [--submitters 4] [--timeout-s S] [--supervise] [--keep]``
(``make chaos CHAOS_ARGS="--count 200"``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from deploy.devstack.servers import RedisServer, SeaweedS3Server, free_port
from shared.predictions.status import Status
from shared.predictions.store import PredictionStore
from shared.scheduling import queues
from tests.support import REPO_ROOT, data_uri, png_bytes, wait_until
from tests.support.receiver import WebhookReceiver
from tests.support.stack import TOKEN_A, WEBHOOK_WORKER_ARGV, Stack, uvicorn_argv
from tools.chaos_events import ChaosSchedule, Watchdog
from tools.chaos_fleet import run_fleet

TERMINAL = {status.value for status in Status if status.is_terminal()}
CHAOS_SETTINGS = {
    "KILN_LEASE_S": "5",
    "KILN_MAX_ATTEMPTS": "3",
    "KILN_WEBHOOK_ALLOW_PRIVATE": "true",
    "KILN_WEBHOOK_RETRY_SCHEDULE_S": json.dumps([0.5, 1, 2, 4, 8, 16, 30]),
    "KILN_WEBHOOK_TIMEOUT_S": "10",
    "KILN_MODEL_TIME_LIMITS_S": json.dumps({}),
    "KILN_STORAGE_ATTEMPTS": "5",
    # One client submits everything: no rate limit in the way.
    "KILN_RATE_LIMIT_PER_S": "1000000",
    "KILN_RATE_LIMIT_BURST": "1000000",
}
# A submission is retried (same Idempotency-Key) on 429, 503 and network errors for this long.
SUBMIT_RETRY_S = 180.0
# After everything looks done, wait this long for late duplicates (a second completed webhook).
SETTLE_S = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="predictions to submit (default 2000)")
    parser.add_argument("--submitters", type=int, default=4, help="threads submitting (default 4)")
    parser.add_argument(
        "--backlog",
        type=int,
        default=40,
        help="submitters pause while more than this many jobs wait in the queue (default 40)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=None,
        help="overall limit for the run (default: 120 s plus 2 s per prediction)",
    )
    parser.add_argument(
        "--weights-dir",
        type=Path,
        default=REPO_ROOT / ".kiln" / "weights",
        help="tiny weights, built there once (default: make run's .kiln/weights)",
    )
    parser.add_argument(
        "--supervise",
        action="store_true",
        help="restart a process that exits on its own, as make run's supervisor does",
    )
    parser.add_argument("--no-faults", action="store_true", help="inject no fault: a baseline for the timings")
    parser.add_argument("--keep", action="store_true", help="keep the stack's directory (logs) and print its path")
    parser.add_argument(
        "--fleet",
        action="store_true",
        help="the fleet run: Redis behind Sentinel, 3 APIs, 4 GPU workers, 2 webhook workers (tools.chaos_fleet)",
    )
    parser.add_argument("--s3-down-s", type=float, default=30.0, help="fleet: how long S3 is stopped (default 30)")
    parser.add_argument(
        "--receiver-down-s",
        type=float,
        default=300.0,
        help="fleet: how long the webhook receiver is down (default 300)",
    )
    parser.add_argument(
        "--batch-lines",
        type=int,
        default=10_000,
        help="fleet: lines of the batch file submitted beside the single creates (default 10000; 0: none)",
    )
    parser.add_argument(
        "--settle-timeout-s", type=float, default=900.0, help="fleet: how long to wait for every webhook (default 900)"
    )
    return parser.parse_args(argv)


def log(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Submitter:
    """Submits predictions from a pool of threads, one httpx client each, pacing on the queue length."""

    def __init__(self, stack: Stack, receiver_url: str, backlog: int) -> None:
        self.stack = stack
        self.receiver_url = receiver_url
        self.backlog = backlog
        self.image = data_uri(png_bytes(64, 64))
        self.accepted: dict[int, str] = {}
        self.refused: list[int] = []
        self._lock = threading.Lock()
        self._queue_redis = redis.Redis.from_url(stack.redis_url, socket_timeout=2, socket_connect_timeout=2)

    def run(self, count: int, threads: int) -> None:
        indices = iter(range(count))
        take = threading.Lock()

        def work() -> None:
            with self.stack.client(TOKEN_A) as client:
                while True:
                    with take:
                        index = next(indices, None)
                    if index is None:
                        return
                    self._wait_for_room()
                    self.submit(client, index)

        with ThreadPoolExecutor(threads, thread_name_prefix="submit") as pool:
            for future in [pool.submit(work) for _ in range(threads)]:
                future.result()

    def _wait_for_room(self) -> None:
        """Keep the queue short, so that the faults land while submissions are still coming in."""
        while True:
            try:
                if self._queue_redis.llen(queues.SD2_DEPTH) <= self.backlog:
                    return
            except redis.RedisError:
                pass
            time.sleep(0.2)

    def submit(self, client: httpx.Client, index: int) -> None:
        body = {
            "version": "kiln/sd2-depth2img",
            "input": {"prompt": "chaos", "input_image": self.image, "num_inference_steps": 2, "seed": index},
            "webhook": self.receiver_url,
            "webhook_events_filter": ["completed"],
        }
        headers = {"Idempotency-Key": f"chaos-{index}"}
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while time.monotonic() < deadline:
            try:
                response = client.post("/v1/predictions", json=body, headers=headers, timeout=30)
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code == 201:
                with self._lock:
                    self.accepted[index] = response.json()["id"]
                    if len(self.accepted) % 100 == 0:
                        log(f"accepted {len(self.accepted)}")
                return
            if response.status_code not in {409, 429, 503}:
                log(f"submission {index} refused for good: {response.status_code} {response.text[:200]}")
                break
            time.sleep(min(float(response.headers.get("retry-after", 1)), 2.0))
        with self._lock:
            self.refused.append(index)

    @property
    def accepted_count(self) -> int:
        with self._lock:
            return len(self.accepted)


def completed_deliveries(receiver: WebhookReceiver) -> dict[str, set[str]]:
    """Prediction id -> distinct webhook-ids of the terminal (``completed``) deliveries received."""
    return receiver.terminal_deliveries()[0]


def statuses(stack: Stack, prediction_ids: list[str]) -> dict[str, str]:
    """Prediction id -> status, read from Redis (the source of truth); missing ids are left out."""
    with redis.Redis.from_url(stack.redis_url, socket_timeout=10) as client:
        store = PredictionStore(client)
        found: dict[str, str] = {}
        for start in range(0, len(prediction_ids), 500):
            found |= {p.id: p.status.value for p in store.get_many(prediction_ids[start : start + 500])}
    return found


def settled(stack: Stack, submitter: Submitter, receiver: WebhookReceiver) -> bool:
    ids = list(submitter.accepted.values())
    try:
        current = statuses(stack, ids)
    except redis.RedisError:
        return False
    delivered = completed_deliveries(receiver)
    terminal = [i for i in ids if current.get(i) in TERMINAL]
    log(f"accepted={len(ids)} terminal={len(terminal)} webhooks={sum(1 for i in terminal if i in delivered)}")
    return len(terminal) == len(ids) and all(i in delivered for i in terminal)


def summary(
    count: int, stack: Stack, submitter: Submitter, receiver: WebhookReceiver, crashes: int, seconds: float
) -> str:
    ids = list(submitter.accepted.values())
    current = statuses(stack, ids)
    delivered = completed_deliveries(receiver)
    terminal = [i for i in ids if current.get(i) in TERMINAL]
    counts = {
        "submitted": count,
        "terminal": len(terminal),
        "succeeded": sum(1 for i in terminal if current[i] == Status.SUCCEEDED.value),
        "failed": sum(1 for i in terminal if current[i] == Status.FAILED.value),
        "lost": len(ids) - len(terminal),
        "completed_twice": sum(1 for i in ids if len(delivered.get(i, ())) > 1),
        "webhooks_missing": sum(1 for i in terminal if i not in delivered),
        "refused": len(submitter.refused),
        "crashes": crashes,
        "seconds": round(seconds),
    }
    return " ".join(f"{name}={value}" for name, value in counts.items())


def start_stack(root: Path, weights_dir: Path) -> Stack:
    """Redis (AOF) and SeaweedFS, then the API, the webhook worker and the GPU worker, all ready."""
    (root / "logs").mkdir(parents=True)
    access_key, secret_key = "kiln-chaos", secrets.token_hex(16)
    redis_server = RedisServer(root / "redis", appendonly=True).start()
    s3 = SeaweedS3Server(root / "s3", access_key, secret_key).start()
    port = free_port()
    stack = Stack.plain(root, redis_server, s3, (access_key, secret_key), weights_dir, port, CHAOS_SETTINGS)
    try:
        stack.start("webhooks", WEBHOOK_WORKER_ARGV)
        stack.start("api", uvicorn_argv(port))
        stack.start_gpu_worker()
        wait_until(lambda: _healthy(stack), 60, what="the API's /health")
    except BaseException:
        stop_stack(stack)
        raise
    return stack


def stop_stack(stack: Stack) -> None:
    stack.stop_all()
    stack.s3.stop()
    stack.redis.stop()


def _healthy(stack: Stack) -> bool:
    try:
        return httpx.get(f"{stack.base_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def run(args: argparse.Namespace, root: Path) -> str:
    timeout_s = args.timeout_s if args.timeout_s is not None else 120 + 2.0 * args.count
    log(f"starting the stack under {root}")
    stack = start_stack(root, args.weights_dir)
    watchdog = None
    try:
        with stack.client(TOKEN_A) as client:
            secret = client.get("/v1/webhooks/default/secret").json()["key"]
        with WebhookReceiver(secret) as receiver:
            submitter = Submitter(stack, receiver.url("/chaos"), args.backlog)
            chaos = ChaosSchedule(stack, lambda: submitter.accepted_count / args.count, log, inject=not args.no_faults)
            watchdog = Watchdog(stack, chaos, restarters(stack), args.supervise, log)
            started = time.monotonic()
            deadline = started + timeout_s
            chaos.start()
            watchdog.start()
            submitter.run(args.count, args.submitters)
            log(f"all submitted: {submitter.accepted_count} accepted, {len(submitter.refused)} refused")
            chaos.join(deadline)
            while not settled(stack, submitter, receiver) and time.monotonic() < deadline:
                time.sleep(5)
            time.sleep(SETTLE_S)
            log(f"faults injected: {chaos.done}; bad signatures at the receiver: {receiver.bad_signatures}")
            return summary(args.count, stack, submitter, receiver, len(watchdog.crashes), time.monotonic() - started)
    finally:
        if watchdog is not None:
            watchdog.stop()
        stop_stack(stack)


def restarters(stack: Stack) -> dict[str, Callable[[], None]]:
    """How to start each watched process again."""
    port = int(stack.base_url.rsplit(":", 1)[1])
    return {
        "api": lambda: stack.start("api", uvicorn_argv(port)),
        "webhooks": stack.restart_webhook_worker,
        "gpu-worker": stack.start_gpu_worker,
    }


def _interrupt(*_: object) -> None:
    """SIGTERM stops the stack through the ``finally`` blocks, like Ctrl-C, leaving no server behind."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kiln-chaos-"))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        print(run_fleet(args, root, log) if args.fleet else run(args, root), flush=True)
    finally:
        if args.keep:
            log(f"kept {root} (logs in {root / 'logs'})")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
