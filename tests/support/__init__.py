"""Helpers the test packages share: test images, processes, polling.

Test modules import helpers from here (and its submodules), never from one another:
``tests.support.predictions`` (what the integration tests send a stack), ``tests.support.step_gates``
(a prediction that runs until the test lets it go), ``tests.support.worker_inputs`` (predictor inputs),
``tests.support.fake_predictors`` (the fake model the runner tests run on).
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]

T = TypeVar("T")


def fake_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder of tiny weights for the whole run, whoever needs them (the stack, the model tests).

    ``KILN_TEST_WEIGHTS_DIR`` when set (tiny weights are deterministic: a built copy is reused across
    runs); otherwise a folder under the run's temporary root, shared by the parallel test processes
    (building is locked and atomic: ``models.kit.fake_weights.building.ensure_built``).
    """
    configured = os.environ.get("KILN_TEST_WEIGHTS_DIR")
    if configured:
        return Path(configured)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # each parallel process has its own basetemp below the run's
    folder = root / "fake-weights"
    folder.mkdir(exist_ok=True)
    return folder


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A deterministic noisy RGB PNG."""
    image = Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def start_process(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start a child in its own session (so the whole group can be stopped), logging to a file."""
    # The child inherits the descriptor; this process's copy closes once Popen has it.
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, start_new_session=True
        )


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    stop_processes([process], timeout)


def stop_processes(processes: Iterable[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM to each process group at once, then wait for them; a group still running after
    ``timeout`` is killed."""
    running = [process for process in processes if process.poll() is None]
    for process in running:
        os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)


@contextmanager
def paused(pid: int | None) -> Iterator[None]:
    """The process stopped (SIGSTOP: it answers nothing, its connections stay open) for the block."""
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def requests_waiting_at(port: int) -> int:
    """Connections to local ``port`` holding bytes their server has not read (/proc/net/tcp and tcp6): the
    requests a paused server has been sent."""
    waiting = 0
    for table in filter(Path.exists, (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))):  # tcp6: where IPv6 is on
        for line in table.read_text().splitlines()[1:]:
            local, state, queues = line.split()[1], line.split()[3], line.split()[4]
            if int(local.rsplit(":", 1)[1], 16) == port and state == "01" and int(queues.split(":")[1], 16) > 0:
                waiting += 1
    return waiting


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def wait_for_status(client: httpx.Client, prediction_id: str, statuses: set[str], timeout: float = 120.0) -> dict:
    last: dict = {}

    def current():
        body = client.get(f"/v1/predictions/{prediction_id}").json()
        last.update(body)
        return body if body["status"] in statuses else None

    try:
        return wait_until(current, timeout, what=f"prediction {prediction_id} to reach {sorted(statuses)}")
    except AssertionError as exc:
        seen = {key: last.get(key) for key in ("status", "started_at", "error", "logs")}
        raise AssertionError(f"{exc}; last seen {seen}") from None


def python() -> str:
    return sys.executable


PROBLEM_JSON = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, *fragments: str) -> dict:
    """Assert ``response`` is a ``status`` problem+json whose ``detail`` contains every fragment."""
    assert response.status_code == status, f"{response.status_code} {response.text[:500]}"
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers["content-type"]
    problem = response.json()
    assert problem["status"] == status and problem["title"] and isinstance(problem["detail"], str), problem
    for fragment in fragments:
        assert fragment in problem["detail"], f"{fragment!r} not in {problem['detail']!r}"
    return problem


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def image_bytes(format: str, width: int = 32, height: int = 32) -> bytes:
    """A small valid image in any format Pillow writes (TIFF, ICO, ...), to test the format allow-list."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), "teal").save(buffer, format=format)
    return buffer.getvalue()


def run_on_own_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coroutine)`` on a new event loop in a thread of its own: the browser tests' session
    fixture (Playwright's sync API) keeps an event loop running in the main thread of the worker process
    that ran them, where ``asyncio.run`` then refuses to start."""
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, coroutine).result()
