"""``make bench``: create throughput (single and batch) and scheduling/webhook overhead, as a table.

Starts a stack on free ports with the chaos harness's ``start_stack`` (redis-server, SeaweedFS, one
API process under uvicorn, one GPU worker for ``kiln/sd2-depth2img`` on the tiny profile, the
webhook worker), then measures:

- create throughput: predictions accepted per second by the one API process, after a warm-up,
  for single creates (concurrent clients) and for batches of ``--batch-size``, each create and batch item
  with its own prompt, seed and structure image (``single_body``, ``batch_body``). They target
  ``kiln/ip-adapter-depth-xl``, whose queue no worker consumes here, so the GPU worker stays idle;
  that queue is emptied afterwards. Beside the single creates, the plain create
  (``tools.plain_create``: FastAPI, pydantic, one Redis SET) served by uvicorn in the same run and
  hammered alike, the ratio, and both at ``PEAK_CLIENTS`` clients with their p99 latency.
- batch-file acceptance (``tools.bench_batch_file``): a JSONL file of ``--file-lines`` distinct
  create bodies (own prompt and seed; an uploaded image, image URLs on a loopback server, small data
  URIs: ``tools.batch_lines``) sent as ``POST /v1/batches {"input_file": ...}``: seconds until it
  answers (every line validated, stored and queued), Redis bytes per queued item, the cancel; then,
  labelled apart, a file of one line repeated (validated once: not what users send).
- downloads (``tools.bench_downloads``): files served by the API from S3, one token's clients fetching
  distinct small PNGs: downloads per second and p99.
- on the idle worker, one prediction at a time (tiny sd2, 64x64, ONE denoising step, so the model's
  time hardly hides the overhead): submit -> ``started_at``, ``completed_at`` -> ``completed``
  webhook received (loopback receiver), and ``predict_time`` for scale.

The client runs on the same machine as the stack and competes with it for the CPU.
- Redis bytes per queued prediction, and used_memory back at its baseline after retention and
  record expiry (``tools.redis_bytes``; ``--count`` predictions of each kind).

Usage: ``python -m tools.bench [--seconds 10] [--latency-runs 40] [--batch-size 1000]
[--sections batch-file,throughput,downloads,latency,redis] [--count 10000] [--only-batch-file]``.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import io
import itertools
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import redis
from PIL import Image

from shared.db import keys
from shared.scheduling import queues
from tests.support import REPO_ROOT, data_uri
from tests.support.receiver import WebhookReceiver
from tests.support.stack import TOKEN_A, Stack
from tools import bench_batch_file, bench_downloads, plain_create, redis_bytes
from tools.batch_lines import MODEL, create_input, solid_data_uri
from tools.bench_batch_file import FileRun, batch_file, file_rows
from tools.chaos import CHAOS_SETTINGS, start_stack
from tools.client_processes import percentile, run_clients

TARGETS = {
    "batch": 20_000,
    "single": 2_000,
    "start_p50_ms": 5,
    "start_p99_ms": 20,
    "webhook_p50_ms": 20,
    "single_vs_plain": 0.4,
}
# Concurrent clients of the create-latency run (p99).
PEAK_CLIENTS = 64


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


IMAGE = tiny_png()
SD2_INPUT = {"prompt": "bench", "input_image": IMAGE, "num_inference_steps": 1, "prompt_strength": 1.0, "seed": 1}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _client_thread(
    base_url: str, token: str, path: str, bodies: list[bytes], deadline: float, found: list[tuple[int, list[float]]]
) -> None:
    """One keep-alive connection posting ``bodies`` in turn until ``deadline``; adds the predictions accepted
    and each request's latency (s)."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    accepted = 0
    latencies: list[float] = []
    for body in itertools.cycle(bodies):
        if time.monotonic() >= deadline:
            break
        sent = time.monotonic()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        latencies.append(time.monotonic() - sent)
        if response.status == 201:
            accepted += 1
        elif response.status == 200:  # a batch: count the created items
            accepted += sum(1 for r in json.loads(payload)["results"] if "id" in r)
        else:
            raise RuntimeError(f"{path} answered {response.status}: {payload[:300]!r}")
    connection.close()
    found.append((accepted, latencies))


@dataclass(frozen=True)
class Load:
    """What the clients send: ``make_body(n)`` is the n-th request's body (module-level, so that client
    processes can be handed it), each client thread ``per_thread`` of them, made before the clock starts."""

    path: str
    make_body: Callable[[int], bytes]
    per_thread: int


def _client_process(
    base_url: str, token: str, load: Load, first: int, seconds: float, threads: int, start: Any, out: Any
) -> None:
    try:
        bodies = [
            [load.make_body(first + (thread * load.per_thread) + n) for n in range(load.per_thread)]
            for thread in range(threads)
        ]
    except BaseException:
        start.abort()  # the bench fails now, not when the others give up waiting
        raise
    start.wait()
    deadline = time.monotonic() + seconds
    found: list[tuple[int, list[float]]] = []
    workers = [
        threading.Thread(target=_client_thread, args=(base_url, token, load.path, own, deadline, found))
        for own in bodies
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    ok = len(found) == threads
    out.put((sum(a for a, _ in found) if ok else -1, [s for _, latencies in found for s in latencies]))


@dataclass(frozen=True)
class Hammered:
    """What ``_hammer`` measured: predictions accepted per second, and every request's latency (ms)."""

    rate: float
    latencies_ms: list[float]

    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)


def _hammer(base_url: str, load: Load, seconds: float, processes: int, threads: int) -> Hammered:
    """Predictions accepted per second by the API from ``processes`` x ``threads`` keep-alive clients, each
    request a body of its own (``load``), timed from when every client has its bodies made
    (``tools.client_processes``)."""
    args = [
        (base_url, TOKEN_A, load, index * threads * load.per_thread, seconds, threads) for index in range(processes)
    ]
    results, elapsed = run_clients(_client_process, args, seconds)
    if min(accepted for accepted, _ in results) < 0:
        raise RuntimeError("a client thread failed; see its traceback above")
    latencies = [s * 1000 for _, found in results for s in found]
    return Hammered(sum(accepted for accepted, _ in results) / elapsed, latencies)


# What users send (docs: HOSTILE "benchmarks measure what users send"): each create its own prompt, seed and
# images, each batch item its own prompt, seed and structure image beside the batch's one style reference.
SINGLE_PATH = f"/v1/models/{MODEL}/predictions"
# Bodies made per client thread: more than one thread sends in a run (about 200/s at the most here).
SINGLE_BODIES = 3_000


def single_body(index: int) -> bytes:
    return orjson.dumps({"input": create_input(index)})


def batch_body(size: int, index: int) -> bytes:
    style = solid_data_uri(2**23 + index)
    return orjson.dumps(
        {"predictions": [{"model": MODEL, "input": create_input(index * size + n, style)} for n in range(size)]}
    )


def single_load(seconds: float) -> Load:
    return Load(SINGLE_PATH, single_body, min(SINGLE_BODIES, int(250 * seconds) + 100))


def batch_load(size: int, seconds: float, threads: int) -> Load:
    """Enough batches per thread for ``seconds`` at 10,000 items/s over ``threads`` threads."""
    return Load(
        "/v1/predictions/batch", functools.partial(batch_body, size), int(10_000 * seconds / size / threads) + 2
    )


def throughput(base_url: str, load: Load, seconds: float, processes: int, threads: int) -> Hammered:
    _hammer(base_url, load, min(3.0, seconds), processes, threads)  # warm-up
    return _hammer(base_url, load, seconds, processes, threads)


def drop_xl_queue(redis_url: str) -> None:
    """Forget the throughput runs' predictions: no worker will ever run them."""
    with redis.Redis.from_url(redis_url) as client:
        for step in queues.PRIORITY_STEPS:
            client.delete(queues.SDXL if step == 0 else f"{queues.SDXL}\x06\x16{step}")
        client.delete(keys.dispatch_tenants(queues.SDXL), *client.keys(keys.dispatch_queue(queues.SDXL, "*")))
        client.delete(keys.queued_by_tenant(), keys.queued_by_family())


def _wall(moment_monotonic: float) -> float:
    return time.time() - time.monotonic() + moment_monotonic


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def latencies(base_url: str, runs: int) -> dict[str, list[float]]:
    """One prediction at a time on the idle worker: submit->start, completed->webhook, predict_time (ms)."""
    found: dict[str, list[float]] = {"start": [], "webhook": [], "predict": []}
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {TOKEN_A}"}, timeout=60) as client:
        secret = client.get("/v1/webhooks/default/secret").json()["key"]
        with WebhookReceiver(secret) as receiver:
            for run in range(runs + 3):  # the first three warm the worker up
                path = f"/bench/{run}"
                submitted = time.time()
                response = client.post(
                    "/v1/predictions",
                    json={
                        "version": "kiln/sd2-depth2img",
                        "input": SD2_INPUT,
                        "webhook": receiver.url(path),
                        "webhook_events_filter": ["completed"],
                    },
                )
                response.raise_for_status()
                deadline = time.monotonic() + 60
                while not receiver.at(path) and time.monotonic() < deadline:
                    time.sleep(0.001)
                delivered = receiver.at(path)
                if not delivered or run < 3:
                    continue
                body = delivered[0].body
                found["start"].append((_ts(body["started_at"]) - submitted) * 1000)
                found["webhook"].append((_wall(delivered[0].at) - _ts(body["completed_at"])) * 1000)
                found["predict"].append(body["metrics"]["predict_time"] * 1000)
    return found


def render_rows(rows: list[tuple[str, str, str, str]]) -> list[str]:
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    return [" | ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


@dataclass(frozen=True)
class Throughput:
    """The throughput section: Kiln's single creates beside the plain create's, and inline batches."""

    single: Hammered
    plain: Hammered
    single_64: Hammered
    plain_64: Hammered
    batch: Hammered
    batch_size: int
    clients: int

    def rows(self) -> list[tuple[str, str, str, str]]:
        ratio = self.single.rate / self.plain.rate
        return [
            (
                f"single creates accepted/s ({self.clients} clients)",
                f"{self.single.rate:,.0f}",
                f">= {TARGETS['single']:,}",
                verdict(self.single.rate >= TARGETS["single"]),
            ),
            (
                f"plain create (FastAPI + pydantic + 1 Redis SET), creates/s ({self.clients} clients)",
                f"{self.plain.rate:,.0f}",
                "",
                "",
            ),
            (
                "Kiln single / plain create",
                f"{ratio:.2f}x",
                f">= {TARGETS['single_vs_plain']}x",
                verdict(ratio >= TARGETS["single_vs_plain"]),
            ),
            (
                f"create p99 at {PEAK_CLIENTS} clients, Kiln / plain (ms)",
                f"{self.single_64.p99_ms():.1f} / {self.plain_64.p99_ms():.1f}",
                "",
                "",
            ),
            (
                f"creates/s at {PEAK_CLIENTS} clients, Kiln / plain",
                f"{self.single_64.rate:,.0f} / {self.plain_64.rate:,.0f}",
                "",
                "",
            ),
            (
                f"batch creates accepted/s ({self.batch_size}/batch)",
                f"{self.batch.rate:,.0f}",
                f">= {TARGETS['batch']:,}",
                verdict(self.batch.rate >= TARGETS["batch"]),
            ),
        ]


def latency_rows(measured: dict[str, list[float]]) -> list[tuple[str, str, str, str]]:
    start, hook, predict = measured["start"], measured["webhook"], measured["predict"]
    overhead_p50 = percentile(start, 50) + percentile(hook, 50)
    return [
        (
            "submit -> started_at p50 (ms)",
            f"{percentile(start, 50):.1f}",
            f"<= {TARGETS['start_p50_ms']}",
            verdict(percentile(start, 50) <= TARGETS["start_p50_ms"]),
        ),
        (
            "submit -> started_at p99 (ms)",
            f"{percentile(start, 99):.1f}",
            f"<= {TARGETS['start_p99_ms']}",
            verdict(percentile(start, 99) <= TARGETS["start_p99_ms"]),
        ),
        (
            "completed_at -> webhook p50 (ms)",
            f"{percentile(hook, 50):.1f}",
            f"<= {TARGETS['webhook_p50_ms']}",
            verdict(percentile(hook, 50) <= TARGETS["webhook_p50_ms"]),
        ),
        ("completed_at -> webhook p99 (ms)", f"{percentile(hook, 99):.1f}", "", ""),
        ("predict_time p50 / p99 (ms)", f"{percentile(predict, 50):.1f} / {percentile(predict, 99):.1f}", "", ""),
        (
            "overhead share at p50",
            f"{overhead_p50 / (overhead_p50 + statistics.median(predict)):.0%}",
            "",
            "",
        ),
    ]


LATENCY_NOTE = (
    "latency runs: {runs} predictions one at a time on an idle worker; predictor: tiny-profile "
    "kiln/sd2-depth2img, 64x64, 1 denoising step (random weights), so predict_time is small but not zero."
)


def measure_throughput(stack: Stack, args: argparse.Namespace) -> Throughput:
    """Kiln's single creates and the plain create, hammered alike (same client, body, concurrency),
    first at the bench's concurrency, then at ``PEAK_CLIENTS``; then inline batches."""
    processes, threads = args.client_processes, args.concurrency
    peak_threads = PEAK_CLIENTS // processes
    plain_url = plain_create.start(stack)
    found: dict[str, Hammered] = {}
    for name, url, per_process in (
        ("single", stack.base_url, threads),
        ("plain", plain_url, threads),
        ("single_64", stack.base_url, peak_threads),
        ("plain_64", plain_url, peak_threads),
    ):
        log(f"{name} creates, {processes * per_process} clients")
        found[name] = throughput(url, single_load(args.seconds), args.seconds, processes, per_process)
        log(f"{name}: {found[name].rate:,.0f}/s, p99 {found[name].p99_ms():.1f} ms")
        drop_xl_queue(stack.redis_url)
    log("batch-create throughput")
    load = batch_load(args.batch_size, args.seconds, args.batch_concurrency)
    batch = throughput(stack.base_url, load, args.seconds, 1, args.batch_concurrency)
    log(f"batch: {batch.rate:,.0f}/s")
    drop_xl_queue(stack.redis_url)
    return Throughput(batch=batch, batch_size=args.batch_size, clients=processes * threads, **found)


def measure_batch_files(stack: Stack, args: argparse.Namespace) -> list[FileRun]:
    """The distinct-line file (the measure), then the one-line-repeated file (labelled apart)."""
    runs = []
    for distinct in (True, False):
        log(f"batch file of {args.file_lines:,} {'distinct' if distinct else 'identical'} lines")
        runs.append(batch_file(stack.base_url, stack.redis_url, args.file_lines, distinct, cancel=distinct))
        log(f"accepted in {runs[-1].seconds:.2f} s ({runs[-1].rate:,.0f} items/s)")
        drop_xl_queue(stack.redis_url)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per throughput run")
    parser.add_argument("--client-processes", type=int, default=2, help="load-generating processes")
    parser.add_argument("--concurrency", type=int, default=8, help="single-create connections per process")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batch-concurrency", type=int, default=2)
    parser.add_argument("--latency-runs", type=int, default=40)
    parser.add_argument("--file-lines", type=int, default=100_000, help="lines of the batch file")
    parser.add_argument(
        "--only-batch-file", action="store_true", help="measure the batch file alone (--sections batch-file)"
    )
    parser.add_argument("--weights-dir", type=Path, default=REPO_ROOT / ".kiln" / "weights")
    parser.add_argument(
        "--sections",
        default="batch-file,throughput,downloads,latency,redis",
        help="comma-separated: batch-file, throughput, downloads, latency, redis",
    )
    parser.add_argument("--count", type=int, default=10_000, help="predictions per kind in the Redis section")
    args = parser.parse_args(argv)
    sections = {"batch-file"} if args.only_batch_file else set(args.sections.split(","))
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    # The throughput runs queue far more than the default per-tenant cap; the rate limit is already off.
    CHAOS_SETTINGS.update({"KILN_MAX_QUEUED_PER_TENANT": "100000000", "KILN_MAX_QUEUED_TOTAL": "100000000"})
    CHAOS_SETTINGS.update(redis_bytes.REDIS_SETTINGS | bench_batch_file.STACK_SETTINGS)
    log(f"starting the stack under {root}")
    stack = start_stack(root, args.weights_dir)
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    try:
        # Redis's bytes first: measured after the batch file, its used_memory fell as the janitor deleted the
        # file's 100,000 canceled items (-263 to 445 bytes per prediction). It waits for its own to go.
        if "redis" in sections:
            print(redis_bytes.table(redis_bytes.measure(stack.base_url, stack.redis_url, args.count, log)), flush=True)
        if "batch-file" in sections:
            rows += file_rows(measure_batch_files(stack, args))
        if "throughput" in sections:
            rows += measure_throughput(stack, args).rows()
        if "downloads" in sections:
            found = bench_downloads.measure(
                stack.base_url, TOKEN_A, args.seconds, args.client_processes, args.concurrency, log
            )
            rows += bench_downloads.rows(found)
        if "latency" in sections:
            log("latencies on the idle worker")
            measured = latencies(stack.base_url, args.latency_runs)
            rows += latency_rows(measured)
            notes.append(LATENCY_NOTE.format(runs=len(measured["start"])))
    finally:
        stack.stop_all()
        stack.s3.stop()
        stack.redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    if rows:
        print("\n".join([*render_rows(rows), *notes]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
