"""``make bench``: create throughput (single and batch) and scheduling/webhook overhead, as a table.

Starts a stack on free ports with the chaos harness's ``start_stack`` (redis-server, SeaweedFS, one
API process under uvicorn, one GPU worker for ``kiln/sd2-depth2img`` on the tiny profile, the
webhook worker), then measures:

- create throughput: predictions accepted per second by the one API process, after a warm-up,
  for single creates (concurrent clients) and for batches of ``--batch-size``. They target
  ``kiln/ip-adapter-depth-xl``, whose queue no worker consumes here, so the GPU worker stays idle;
  that queue is emptied afterwards.
- batch-file acceptance: a JSONL file of ``--file-lines`` create bodies sharing one uploaded image
  (Files API), sent as ``POST /v1/batches {"input_file": ...}``: seconds until it answers (every
  line validated, stored and queued) and Redis bytes per queued item (``INFO memory`` before and
  after, the items' Celery messages included: the dispatcher keeps most of them in Kiln's compact
  lists). Also ``XL`` items, so none runs.
- on the idle worker, one prediction at a time (tiny sd2, 64x64, ONE denoising step, so the model's
  time hardly hides the overhead): submit -> ``started_at``, ``completed_at`` -> ``completed``
  webhook received (loopback receiver), and ``predict_time`` for scale.

The client runs on the same machine as the stack and competes with it for the CPU.
- Redis bytes per queued prediction, and used_memory back at its baseline after retention and
  record expiry (``tools.redis_bytes``; ``--count`` predictions of each kind).

Usage: ``python -m tools.bench [--seconds 10] [--latency-runs 40] [--batch-size 1000]
[--sections batch-file,throughput,latency,redis] [--count 10000] [--only-batch-file]``.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis
from PIL import Image

from shared.db import keys
from shared.scheduling import queues
from tests.support import REPO_ROOT, data_uri, wait_until
from tests.support.receiver import WebhookReceiver
from tests.support.stack import TOKEN_A
from tools import redis_bytes
from tools.chaos import CHAOS_SETTINGS, start_stack

TARGETS = {
    "batch": 20_000,
    "single": 2_000,
    "start_p50_ms": 5,
    "start_p99_ms": 20,
    "webhook_p50_ms": 20,
    "file_items_per_s": 20_000,
    "file_bytes_per_item": 1024,
}


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


IMAGE = tiny_png()
XL_BODY = {"input": {"prompt": "bench", "input_image": IMAGE, "ip_image": IMAGE, "num_inference_steps": 1}}
SD2_INPUT = {"prompt": "bench", "input_image": IMAGE, "num_inference_steps": 1, "prompt_strength": 1.0, "seed": 1}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _client_thread(base_url: str, token: str, path: str, body: bytes, deadline: float, counts: list[int]) -> None:
    """One keep-alive connection posting ``body`` until ``deadline``; adds the predictions accepted."""
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    accepted = 0
    while time.monotonic() < deadline:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        if response.status == 201:
            accepted += 1
        elif response.status == 200:  # a batch: count the created items
            accepted += sum(1 for r in json.loads(payload)["results"] if "id" in r)
        else:
            raise RuntimeError(f"{path} answered {response.status}: {payload[:300]!r}")
    connection.close()
    counts.append(accepted)


def _client_process(base_url: str, token: str, path: str, body: bytes, seconds: float, threads: int, out) -> None:
    deadline = time.monotonic() + seconds
    counts: list[int] = []
    workers = [
        threading.Thread(target=_client_thread, args=(base_url, token, path, body, deadline, counts))
        for _ in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(sum(counts) if len(counts) == threads else -1)


def _hammer(base_url: str, path: str, body: bytes, seconds: float, processes: int, threads: int) -> float:
    """Predictions accepted per second by the API from ``processes`` x ``threads`` keep-alive clients.

    Plain ``http.client`` connections in separate processes: an asyncio client in one process
    (httpx's AsyncClient) turned out to be the bottleneck itself, collapsing with concurrency.
    """
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    started = time.monotonic()
    clients = [
        context.Process(target=_client_process, args=(base_url, TOKEN_A, path, body, seconds, threads, out))
        for _ in range(processes)
    ]
    for client in clients:
        client.start()
    accepted = [out.get(timeout=seconds + 300) for _ in clients]
    elapsed = time.monotonic() - started
    for client in clients:
        client.join()
    if min(accepted) < 0:
        raise RuntimeError("a client thread failed; see its traceback above")
    return sum(accepted) / elapsed


SINGLE = ("/v1/models/kiln/ip-adapter-depth-xl/predictions", json.dumps(XL_BODY).encode())


def batch_request(size: int) -> tuple[str, bytes]:
    return "/v1/predictions/batch", json.dumps(
        {"predictions": [{"model": "kiln/ip-adapter-depth-xl"} | XL_BODY] * size}
    ).encode()


def throughput(base_url: str, request: tuple[str, bytes], seconds: float, processes: int, threads: int) -> float:
    path, body = request
    _hammer(base_url, path, body, min(3.0, seconds), processes, threads)  # warm-up
    return _hammer(base_url, path, body, seconds, processes, threads)


def drop_xl_queue(redis_url: str) -> None:
    """Forget the throughput runs' predictions: no worker will ever run them."""
    with redis.Redis.from_url(redis_url) as client:
        for step in queues.PRIORITY_STEPS:
            client.delete(queues.SDXL if step == 0 else f"{queues.SDXL}\x06\x16{step}")
        client.delete(keys.dispatch_tenants(queues.SDXL), *client.keys(keys.dispatch_queue(queues.SDXL, "*")))
        client.delete(keys.queued_by_tenant(), keys.queued_by_family())


def batch_file(base_url: str, redis_url: str, lines: int) -> tuple[float, float, float]:
    """Seconds to accept a ``lines``-line batch file, Redis bytes per queued item it added, and
    seconds to cancel the batch (every item ended ``canceled``, the batch too)."""
    headers = {"Authorization": f"Bearer {TOKEN_A}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client, redis.Redis.from_url(redis_url) as r:
        image = client.post("/v1/files", files={"content": ("ref.png", _png_bytes(), "image/png")})
        image.raise_for_status()
        url = image.json()["urls"]["get"]
        line = json.dumps(
            {
                "model": "kiln/ip-adapter-depth-xl",
                "input": {"prompt": "bench", "input_image": url, "ip_image": url, "num_inference_steps": 1},
            }
        )
        upload = client.post(
            "/v1/files", files={"content": ("b.jsonl", "\n".join([line] * lines), "application/jsonl")}
        )
        upload.raise_for_status()
        before = r.info("memory")["used_memory"]
        started = time.monotonic()
        created = client.post("/v1/batches", json={"input_file": upload.json()["urls"]["get"]})
        elapsed = time.monotonic() - started
        created.raise_for_status()
        counts = created.json()["counts"]
        if counts["starting"] != lines:
            raise RuntimeError(f"expected {lines} queued items, the batch says {counts}")
        after = r.info("memory")["used_memory"]
        started = time.monotonic()
        client.post(created.json()["urls"]["cancel"]).raise_for_status()
        wait_until(
            lambda: client.get(created.json()["urls"]["get"]).json()["status"] == "canceled",
            600,
            what="the batch to end canceled",
        )
        canceled = time.monotonic() - started
    return elapsed, (after - before) / lines, canceled


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, format="PNG")
    return buffer.getvalue()


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


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def file_rows(file_lines: int, file_s: float, file_bytes: float, cancel_s: float) -> list[tuple[str, str, str, str]]:
    rate = file_lines / file_s
    return [
        (
            f"batch file accepted/s ({file_lines:,} lines, {file_s:.2f} s)",
            f"{rate:,.0f}",
            f">= {TARGETS['file_items_per_s']:,}",
            "met" if rate >= TARGETS["file_items_per_s"] else "MISSED",
        ),
        (
            "Redis bytes per queued batch-file item",
            f"{file_bytes:,.0f}",
            f"<= {TARGETS['file_bytes_per_item']:,}",
            "met" if file_bytes <= TARGETS["file_bytes_per_item"] else "MISSED",
        ),
        (f"batch cancel: {file_lines:,} items ended canceled, s", f"{cancel_s:.1f}", "", ""),
    ]


def render_rows(rows: list[tuple[str, str, str, str]]) -> list[str]:
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    return [" | ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def table(
    single: float, batch: float, measured: dict[str, list[float]], batch_size: int, extra_rows: list[tuple[str, ...]]
) -> str:
    start, hook, predict = measured["start"], measured["webhook"], measured["predict"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    overhead_p50 = percentile(start, 50) + percentile(hook, 50)
    rows = [
        (
            "single creates accepted/s",
            f"{single:,.0f}",
            f">= {TARGETS['single']:,}",
            verdict(single >= TARGETS["single"]),
        ),
        (
            f"batch creates accepted/s ({batch_size}/batch)",
            f"{batch:,.0f}",
            f">= {TARGETS['batch']:,}",
            verdict(batch >= TARGETS["batch"]),
        ),
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
        *extra_rows,
        ("predict_time p50 / p99 (ms)", f"{percentile(predict, 50):.1f} / {percentile(predict, 99):.1f}", "", ""),
        (
            "overhead share at p50",
            f"{overhead_p50 / (overhead_p50 + statistics.median(predict)):.0%}",
            "",
            "",
        ),
    ]
    lines = render_rows(rows)
    note = (
        f"latency runs: {len(start)} predictions one at a time on an idle worker; predictor: tiny-profile "
        "kiln/sd2-depth2img, 64x64, 1 denoising step (random weights), so predict_time is small but not zero."
    )
    return "\n".join([*lines, note])


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
        default="batch-file,throughput,latency,redis",
        help="comma-separated: batch-file, throughput, latency, redis",
    )
    parser.add_argument("--count", type=int, default=10_000, help="predictions per kind in the Redis section")
    args = parser.parse_args(argv)
    sections = {"batch-file"} if args.only_batch_file else set(args.sections.split(","))
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    # The throughput runs queue far more than the default per-tenant cap; the rate limit is already off.
    CHAOS_SETTINGS.update({"KILN_MAX_QUEUED_PER_TENANT": "100000000", "KILN_MAX_QUEUED_TOTAL": "100000000"})
    CHAOS_SETTINGS.update(redis_bytes.REDIS_SETTINGS)
    log(f"starting the stack under {root}")
    stack = start_stack(root, args.weights_dir)
    try:
        rows: list[tuple[str, str, str, str]] = []
        if "batch-file" in sections:
            log(f"batch file of {args.file_lines:,} lines")
            file_s, file_bytes, cancel_s = batch_file(stack.base_url, stack.redis_url, args.file_lines)
            rows = file_rows(args.file_lines, file_s, file_bytes, cancel_s)
            drop_xl_queue(stack.redis_url)
            if sections == {"batch-file"}:
                print("\n".join(render_rows(rows)), flush=True)
        if "redis" in sections:
            print(redis_bytes.table(redis_bytes.measure(stack.base_url, stack.redis_url, args.count, log)), flush=True)
        if "throughput" in sections:
            log("single-create throughput")
            single = throughput(stack.base_url, SINGLE, args.seconds, args.client_processes, args.concurrency)
            log(f"single: {single:,.0f}/s")
            drop_xl_queue(stack.redis_url)
            log("batch-create throughput")
            batch = throughput(stack.base_url, batch_request(args.batch_size), args.seconds, 1, args.batch_concurrency)
            log(f"batch: {batch:,.0f}/s")
            drop_xl_queue(stack.redis_url)
        if "latency" in sections:
            log("latencies on the idle worker")
            measured = latencies(stack.base_url, args.latency_runs)
            if "throughput" in sections:
                print(table(single, batch, measured, args.batch_size, rows), flush=True)
    finally:
        stack.stop_all()
        stack.s3.stop()
        stack.redis.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
