"""What ``KILN_REDIS_MIN_REPLICAS_ACK`` costs a create: single creates against a primary with one replica,
answered without waiting and after ``WAIT 1`` (``shared.db.replication``), one at a time, p50 and p99.

It starts a redis-server primary and its replica, SeaweedFS, and the API in this process (no worker: the
creates only queue), and prints a Markdown table. Usage: ``python -m tools.bench_replication [--creates N]``.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from api.app import create_app
from deploy.devstack.servers import RedisServer, SeaweedS3Server
from shared.settings import Settings
from tests.support import data_uri, png_bytes

TOKEN = "bench-replication"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=400, help="creates per setting (default 400)")
    return parser.parse_args(argv)


def latencies_ms(client: TestClient, count: int) -> list[float]:
    body = {"version": "kiln/sd2-depth2img", "input": {"prompt": "bench", "input_image": data_uri(png_bytes(64, 64))}}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    measured = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.post("/v1/predictions", json=body, headers=headers)
        measured.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 201, response.text
    return measured


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100)[round(share * 100) - 1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kiln-bench-replication-"))
    password = secrets.token_urlsafe(12)
    access_key, secret_key = "bench", secrets.token_hex(16)
    with (
        RedisServer(root / "primary", appendonly=False, password=password) as primary,
        RedisServer(root / "replica", appendonly=False, password=password, replica_of=primary.port),
        SeaweedS3Server(root / "s3", access_key, secret_key) as s3,
    ):
        rows = []
        for replicas in (0, 1):
            settings = Settings(
                _env_file=None,
                redis_url=primary.url,
                api_token=TOKEN,
                s3_endpoint_url=s3.endpoint_url,
                s3_access_key=access_key,
                s3_secret_key=secret_key,
                s3_bucket="bench",
                redis_min_replicas_ack=replicas,
                max_queued_per_tenant=10 * args.creates,
                rate_limit_per_s=1_000_000,
                rate_limit_burst=1_000_000,
                batch_intake_warm=False,
            )
            with TestClient(create_app(settings)) as client:
                latencies_ms(client, 20)  # warm-up
                measured = latencies_ms(client, args.creates)
            label = "no replicas ack" if replicas == 0 else "1 replica ack"
            rows.append(f"| {label} | {percentile(measured, 0.5):.1f} ms | {percentile(measured, 0.99):.1f} ms |")
    print(f"{args.creates} single creates one at a time, in-process API, primary + 1 replica on loopback")
    print("| | create p50 | create p99 |\n|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
