"""Where a batch file's time goes, per line: ``python -m tools.profile_batch [--lines 20000] [--profile]``.

Runs ``api.intake.batch_file.create_batch`` in this process (no HTTP, no intake process) against a
private redis-server and SeaweedFS, on a file of distinct lines (``tools.batch_lines``: own prompt
and seed per line; an uploaded image, a few hundred URLs of a loopback server, small data URIs),
and prints the µs per line and the Redis round trips per line (commands sent on a connection, a
pipeline counting once), split by stage. ``--profile`` adds a pyinstrument profile of one run.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from redis.connection import Connection

from api.intake import batch_file, batch_pool
from api.services import Services
from deploy.devstack.servers import RedisServer, SeaweedS3Server
from shared.settings import Settings
from tools.batch_lines import ImageURLServer, distinct_lines, identical_lines, png

TENANT = "profile"
BASE_URL = "http://kiln.test"


class RoundTrips:
    """Counts what this process sends Redis: one per command sent, one per pipeline sent."""

    def __init__(self) -> None:
        self.count = 0
        self._send = Connection.send_packed_command

    def __enter__(self) -> RoundTrips:
        counter = self
        original = self._send

        def counted(connection: Connection, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            original(connection, command, check_health)

        Connection.send_packed_command = counted  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Connection.send_packed_command = self._send  # type: ignore[method-assign]


class Stages:
    """Wall time and round trips of the batch intake's stages (wrapped functions of ``batch_file``)."""

    def __init__(self, trips: RoundTrips) -> None:
        self.trips = trips
        self.seconds: Counter[str] = Counter()
        self.sent: Counter[str] = Counter()

    @contextmanager
    def wrapped(self, names: list[str]) -> Iterator[None]:
        originals = {name: getattr(batch_file, name) for name in names}
        for name, function in originals.items():
            setattr(batch_file, name, self._timed(name, function))
        try:
            yield
        finally:
            for name, function in originals.items():
                setattr(batch_file, name, function)

    def _timed(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started, sent = time.perf_counter(), self.trips.count
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - started
                self.sent[name] += self.trips.count - sent

        return timed


STAGES = ["validate_items", "store_batch"]


def run_once(services: Services, lines: list[bytes], stages: Stages) -> float:
    items = iter(enumerate(lines, start=1))
    started = time.perf_counter()
    with stages.wrapped(STAGES):
        batch = batch_file.create_batch(
            services, TENANT, items, len(lines), BASE_URL, None, "profile", 10**9, batch_id=None
        )
    elapsed = time.perf_counter() - started
    if batch.counts.get("starting") != len(lines):
        raise RuntimeError(f"expected {len(lines)} queued items: {batch.counts}, {batch.refused} refused")
    return elapsed


def report(label: str, lines: int, elapsed: float, stages: Stages, trips: int) -> None:
    print(f"== {label}: {lines:,} lines in {elapsed:.2f} s = {lines / elapsed:,.0f} lines/s", flush=True)
    print(f"   total: {elapsed / lines * 1e6:7.1f} µs/line, {trips / lines:.3f} round trips/line ({trips})")
    for name in STAGES:
        print(
            f"   {name:15} {stages.seconds[name] / lines * 1e6:7.1f} µs/line, "
            f"{stages.sent[name] / lines:.3f} round trips/line ({stages.sent[name]})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each file (the first warms up)")
    parser.add_argument("--profile", action="store_true", help="also profile one run (pyinstrument)")
    parser.add_argument("--identical", action="store_true", help="also time the one-line-repeated file")
    parser.add_argument(
        "--no-helper",
        action="store_true",
        help="validate in this process alone (an intake process shares a large file with its helper process)",
    )
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="kiln-profile-batch-"))
    access_key, secret_key = "kiln-profile", secrets.token_hex(16)
    with (
        RedisServer(root / "redis", appendonly=False) as redis_server,
        SeaweedS3Server(root / "s3", access_key, secret_key) as s3,
        ImageURLServer() as images,
    ):
        settings = Settings(
            _env_file=None,
            redis_url=redis_server.url,
            api_token="t",
            s3_endpoint_url=s3.endpoint_url,
            s3_access_key=access_key,
            s3_secret_key=secret_key,
            s3_bucket="kiln-profile",
            max_queued_per_tenant=10**9,
            max_queued_total=10**9,
            image_fetch_allow_private=True,
        )
        services = Services.connect(settings)
        services.storage.ensure_bucket()
        if not args.no_helper:  # as an intake process does (``api.intake.batch_pool``)
            batch_pool._helper = batch_pool.helper_pool(settings)
            batch_pool._helper.submit(batch_pool._ready).result()
        upload = services.files.create(TENANT, "ref.png", "image/png", png(1), {})
        uploaded_url = f"{BASE_URL}/v1/files/{upload.id}"
        files = {"distinct": distinct_lines(args.lines, uploaded_url, images.urls())}
        if args.identical:
            files["identical"] = identical_lines(args.lines, uploaded_url)
        for label, lines in files.items():
            for run in range(args.runs):
                with RoundTrips() as trips:
                    stages = Stages(trips)
                    elapsed = run_once(services, lines, stages)
                report(f"{label} run {run + 1}", len(lines), elapsed, stages, trips.count)
            services.redis.flushdb()
            upload = services.files.create(TENANT, "ref.png", "image/png", png(1), {})
            uploaded_url = f"{BASE_URL}/v1/files/{upload.id}"
            if "identical" in files:
                files["identical"] = identical_lines(args.lines, uploaded_url)
            if label == "distinct":
                files["distinct"] = distinct_lines(args.lines, uploaded_url, images.urls())
        print(f"image server requests: {images.hits}")
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            with profiler, RoundTrips() as trips:
                run_once(services, distinct_lines(args.lines, uploaded_url, images.urls()), Stages(trips))
            print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False), flush=True)
        if batch_pool._helper is not None:
            batch_pool._helper.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
