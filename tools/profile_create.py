"""Profile the API's create paths in-process: ``python -m tools.profile_create [--app-only] [--count N]``.

``app``: the whole ASGI app (middleware, routing, dependencies, the route, the asyncio Redis client) served
the bench's single creates (``kiln/ip-adapter-depth-xl``, each its own prompt, seed and two 64x64 data URIs:
``tools.bench.single_body``) by 16 clients at once, without uvicorn or sockets to the client: the API
process's CPU µs per create, the redis-server's (``INFO cpu``) and the cyclic garbage collector's,
unprofiled, then where the time goes
(pyinstrument). ``single`` and ``batch``: ``submit`` and ``submit_batch`` alone (pyinstrument). All against a
private redis-server; object storage is not touched (data-URI inputs).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis
from pyinstrument import Profiler

from api.app import create_app
from api.intake.inline_batch import submit_batch
from api.intake.submission import submit
from api.schemas import CreatePrediction
from api.services import Services
from deploy.devstack.servers import RedisServer
from models.registry import find_model
from shared.settings import Settings
from tools.batch_lines import MODEL
from tools.bench import SINGLE_PATH, batch_body, single_body

CLIENTS = 16


def _settings(redis_url: str) -> Settings:
    return Settings(
        _env_file=None,
        redis_url=redis_url,
        api_token="t",
        max_queued_per_tenant=10**8,
        max_queued_total=10**8,
        rate_limit_per_s=10**6,
        rate_limit_burst=10**6,
    )


async def _post(app: Any, body: bytes, statuses: list[int]) -> None:
    """One create through the ASGI app, as uvicorn would hand it over."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", b"Bearer t"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": SINGLE_PATH,
        "raw_path": SINGLE_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)


def _bodies(count: int, first: int = 0) -> list[bytes]:
    """``count`` single creates, each its own (made before any clock starts)."""
    return [single_body(first + n) for n in range(count)]


async def _creates(app: Any, bodies: list[bytes]) -> None:
    statuses: list[int] = []
    per_client = len(bodies) // CLIENTS

    async def client(first: int) -> None:
        for body in bodies[first : first + per_client]:
            await _post(app, body, statuses)

    await asyncio.gather(*(client(index * per_client) for index in range(CLIENTS)))
    refused = [status for status in statuses if status != 201]
    if refused:
        raise RuntimeError(f"{len(refused)} creates answered {sorted(set(refused))}")


class _CollectorTime:
    """The time the cyclic garbage collector ran inside the block, and how often: a request that leaves a
    reference cycle behind makes it run often, and each run walks every object it left."""

    def __init__(self) -> None:
        self.seconds, self.collections, self._started = 0.0, 0, 0.0

    def _observe(self, phase: str, _: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def __enter__(self) -> _CollectorTime:
        gc.callbacks.append(self._observe)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self._observe)


async def _profile_app(redis_url: str, count: int) -> None:
    app = create_app(_settings(redis_url))
    server = redis.Redis.from_url(redis_url)

    def redis_cpu_s() -> float:
        info = server.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    async with app.router.lifespan_context(app):
        await _creates(app, _bodies(400))  # warm-up
        for run in range(3):
            bodies = _bodies(count, (run + 1) * count)
            redis_before, cpu_before, started = redis_cpu_s(), time.process_time(), time.perf_counter()
            with _CollectorTime() as collector:
                await _creates(app, bodies)
            cpu, wall = time.process_time() - cpu_before, time.perf_counter() - started
            redis_us = (redis_cpu_s() - redis_before) / count * 1e6
            print(
                f"== app, run {run + 1}: {cpu / count * 1e6:,.0f} µs API CPU per create "
                f"(redis-server {redis_us:,.0f} µs; cyclic GC {collector.seconds / count * 1e6:,.1f} µs in "
                f"{collector.collections} collections), {count / wall:,.0f} creates/s, {CLIENTS} at once (unprofiled)",
                flush=True,
            )
        bodies = _bodies(count, 4 * count)
        profiler = Profiler(interval=0.0005, async_mode="disabled")
        with profiler:
            await _creates(app, bodies)
        print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app-only", action="store_true", help="only the whole app's single create")
    parser.add_argument("--count", type=int, default=4000, help="creates per app run")
    options = parser.parse_args()
    with RedisServer(Path(tempfile.mkdtemp(prefix="kiln-profile-"))) as redis_server:
        asyncio.run(_profile_app(redis_server.url, options.count))
        if options.app_only:
            return 0
        services = Services.connect(_settings(redis_server.url))
        spec = find_model(MODEL)
        created = [orjson.loads(body) | {"version": MODEL} for body in _bodies(2000)]
        singles = iter([CreatePrediction.model_validate(body) for body in created])
        batches = iter([orjson.loads(batch_body(1000, n))["predictions"] for n in range(11)])
        submit_batch(services, "t", next(batches), "http://x", None)  # warm-up
        for name, run, count in (
            ("single", lambda: submit(services, "t", spec, next(singles), "http://x"), 2000),
            ("batch", lambda: submit_batch(services, "t", next(batches), "http://x", None), 10),
        ):
            profiler = Profiler(interval=0.0005)
            started = time.perf_counter()
            with profiler:
                for _ in range(count):
                    run()
            elapsed = time.perf_counter() - started
            per_s = count * (1000 if name == "batch" else 1) / elapsed
            print(f"== {name}: {per_s:,.0f} predictions/s in-process (profiled)", flush=True)
            print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
